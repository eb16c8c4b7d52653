# Managed by imagebuild: the Packer template for image family "workers-lts".
# Rendered from the spec by `imagebuild packer` / `imagebuild render`; `imagebuild bake` runs it.
# Both sources run the same steps: upload the payload, run install.sh, clean the image,
# take the image's inventory (inventory.py, for its SBOM), then run the in-guest check (check.py --phase
# build) last, so no image is captured unchecked, and remove the staging with both programs.

variable "base_image" {
  type        = string
  description = "qcow2 cloud image the qemu build starts from (URL or path)."
  default     = ""
}

variable "base_checksum" {
  type        = string
  description = "Checksum of base_image, as sha256:<hex>."
  default     = "none"
}

variable "output_directory" {
  type        = string
  description = "Where the qemu build writes the image; must not exist yet."
  default     = "output"
}

variable "accelerator" {
  type        = string
  description = "QEMU accelerator: kvm or tcg."
  default     = "tcg"
  validation {
    condition     = contains(["kvm", "tcg"], var.accelerator)
    error_message = "The accelerator must be kvm or tcg."
  }
}

variable "disk_discard" {
  type        = string
  description = "unmap: blocks the build frees become holes in the qcow2; ignore: they stay (for comparison)."
  default     = "unmap"
  validation {
    condition     = contains(["unmap", "ignore"], var.disk_discard)
    error_message = "The disk_discard must be unmap or ignore."
  }
}

variable "ssh_private_key_file" {
  type        = string
  description = "Private key of the build user the NoCloud seed (seed/) creates."
  default     = "seed/id_ed25519"
}

variable "firmware_code" {
  type        = string
  description = "UEFI firmware code (read-only pflash: OVMF_CODE_4M.fd, AAVMF_CODE.fd); empty: SeaBIOS. Packer 1.6.6 has no firmware option, so it goes in through qemuargs."
  default     = ""
}

variable "firmware_vars" {
  type        = string
  description = "This build's own copy of the UEFI variable store (writable pflash); with firmware_code."
  default     = ""
}

variable "qemu_binary" {
  type        = string
  description = "The QEMU of the image's architecture (image.architecture) that runs the build VM."
  default     = "qemu-system-x86_64"
}

variable "inventory_file" {
  type        = string
  description = "Where the build's inventory of the image (inventory.py's JSON) is downloaded; empty: inventory.json beside this template."
  default     = ""
}

variable "aws_endpoint" {
  type        = string
  description = "EC2 endpoint override (a private endpoint, or a local test server); empty: AWS's own."
  default     = ""
}

locals {
  render_dir = "${path.root}/.."
  build_user = "imagebuild-build"
  inventory_file = var.inventory_file != "" ? var.inventory_file : "${path.root}/inventory.json"
}

source "qemu" "golden" {
  disk_image       = true
  iso_url          = var.base_image
  iso_checksum     = var.base_checksum
  output_directory = var.output_directory
  vm_name          = "workers-lts.qcow2"
  format           = "qcow2"
  disk_size        = "4G"
  disk_interface   = "virtio"
  # Blocks the build frees (the downloaded tarball, apt lists, logs) and fstrim reports become
  # holes in the qcow2 instead of data: the image grows by little more than the payload.
  disk_discard       = var.disk_discard
  disk_detect_zeroes = var.disk_discard == "unmap" ? "unmap" : "off"
  net_device       = "virtio-net"
  accelerator      = var.accelerator
  qemu_binary      = var.qemu_binary
  machine_type     = "pc"
  cpus             = 2
  memory           = 2048
  # UEFI firmware as two pflash devices given to the machine by node name: Packer 1.6.6 drops its
  # own disk and cdrom drives as soon as qemuargs holds a "-drive", so the flash cannot be one.
  # The -machine given here replaces Packer's own (-machine type=...,accel=...). The -netdev replaces
  # Packer's own, whose SSH forward listens on every host address: the build VM's is on 127.0.0.1 only.
  qemuargs         = concat([["-cpu", "max"],
    ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"]],
    var.firmware_code == "" ? [] : [
    ["-blockdev", "driver=file,node-name=fwcode,read-only=on,filename=${replace(var.firmware_code, ",", ",,")}"],
    ["-blockdev", "driver=file,node-name=fwvars,filename=${replace(var.firmware_vars, ",", ",,")}"],
    ["-machine", "type=pc,accel=${var.accelerator},pflash0=fwcode,pflash1=fwvars"],
  ])
  headless         = true
  cd_files         = ["${path.root}/seed/user-data", "${path.root}/seed/meta-data"]
  cd_label         = "cidata"
  communicator     = "ssh"
  ssh_username     = local.build_user
  ssh_private_key_file = var.ssh_private_key_file
  ssh_timeout      = "20m"
  # The build user leaves with the build: removed as the machine halts.
  shutdown_command = "sudo sh -c 'userdel --force --remove ${local.build_user}; rm -f /etc/sudoers.d/90-cloud-init-users; shutdown -P now'"
  disk_compression = true
}

source "amazon-ebs" "golden" {
  region        = "us-east-1"
  custom_endpoint_ec2 = var.aws_endpoint
  instance_type = "t3.small"
  source_ami_filter {
    filters = {
      name                  = "debian-13-amd64-*"
      "virtualization-type" = "hvm"
      "root-device-type"    = "ebs"
      architecture          = "x86_64"
    }
    owners      = ["136693071363"]
    most_recent = true
  }
  ssh_username  = "admin"
  # Packer's temporary key leaves ~admin/.ssh/authorized_keys before the AMI is captured.
  ssh_clear_authorized_keys = true
  ami_name      = "workers-lts-${formatdate("YYYYMMDD'T'hhmmss'Z'", timestamp())}"
  ami_description = "containerd 2.3.7 golden image, built by imagebuild"
  ami_regions   = []
  ami_users     = []
  # The same accounts may create volumes from its snapshots: without it they cannot copy the AMI.
  snapshot_users = []
  encrypt_boot  = false
  ena_support   = true
  # Packer 1.6 knows neither metadata_options nor imds_support: set image.packer_version to 1.7 or
  # later for an IMDSv2-only build instance and an AMI registered with ImdsSupport v2.0.
  launch_block_device_mappings {
    device_name           = "/dev/xvda"
    volume_size           = 8
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    delete_on_termination = true
  }
  tags          = {"Name" = "workers-lts", "imagebuild:family" = "workers-lts", "imagebuild:spec-hash" = "c7dde3dcfd5ddf4577c0731e0157a9993a06c798fca03c94322b0ee9617cb584", "imagebuild:containerd-version" = "2.3.7"}
  snapshot_tags = {"Name" = "workers-lts", "imagebuild:family" = "workers-lts", "imagebuild:spec-hash" = "c7dde3dcfd5ddf4577c0731e0157a9993a06c798fca03c94322b0ee9617cb584", "imagebuild:containerd-version" = "2.3.7"}
}

build {
  name    = "workers-lts"
  sources = ["source.qemu.golden", "source.amazon-ebs.golden"]

  # The AMI pipeline without provisioning (find the source AMI, launch, snapshot, copy, share,
  # tag, clean up): a quick check of permissions and regions. Never for real images.
  source "amazon-ebs.golden" {
    name         = "plumbing"
    communicator = "none"
  }

  provisioner "shell" {
    except = ["amazon-ebs.plumbing"]
    inline = ["rm -rf /tmp/imagebuild", "mkdir -p /tmp/imagebuild"]
  }

  provisioner "file" {
    except      = ["amazon-ebs.plumbing"]
    sources     = ["${local.render_dir}/payload", "${local.render_dir}/install.sh", "${local.render_dir}/check.py", "${local.render_dir}/expected.json"]
    destination = "/tmp/imagebuild/"
  }


  # The build's CRI client: install.sh --pull-sandbox pulls the sandbox image through it (not installed).
  provisioner "file" {
    except      = ["amazon-ebs.plumbing"]
    sources     = ["${path.root}/cri.py", "${path.root}/cri_hpack.py"]
    destination = "/tmp/imagebuild-cri/"
  }


  provisioner "shell" {
    except          = ["amazon-ebs.plumbing"]
    execute_command = "sudo sh -c '{{ .Vars }} bash {{ .Path }}'"
    inline = [
      "install -d -m 0755 /var/lib/imagebuild",
      "cp -r /tmp/imagebuild/. /var/lib/imagebuild/",
      "bash /var/lib/imagebuild/install.sh /var/lib/imagebuild/payload --pull-sandbox /tmp/imagebuild-cri/cri.py",
    ]
  }

  provisioner "shell" {
    except          = ["amazon-ebs.plumbing"]
    execute_command = "sudo sh -c '{{ .Vars }} bash {{ .Path }}'"
    script          = "${path.root}/hygiene.sh"
  }

  # The inventory of the finished image (packages, binaries, containerd's images and config dump, units), read
  # in this same boot and downloaded for its SBOM; the check's step below removes it and its program with the
  # rest of the staging: the image keeps neither.
  provisioner "file" {
    except      = ["amazon-ebs.plumbing"]
    source      = "${path.root}/inventory.py"
    destination = "/tmp/imagebuild-inventory.py"
  }

  provisioner "shell" {
    except          = ["amazon-ebs.plumbing"]
    execute_command = "sudo sh -c '{{ .Vars }} bash {{ .Path }}'"
    inline          = ["python3 /tmp/imagebuild-inventory.py --output /tmp/imagebuild-inventory.json"]
  }

  provisioner "file" {
    except      = ["amazon-ebs.plumbing"]
    direction   = "download"
    source      = "/tmp/imagebuild-inventory.json"
    destination = local.inventory_file
  }

  provisioner "shell" {
    except          = ["amazon-ebs.plumbing"]
    execute_command = "sudo sh -c '{{ .Vars }} bash {{ .Path }}'"
    # The in-build check, then the staging goes: the image keeps no payload (hosts.toml headers included),
    # install script, check or inventory, only hygiene's build-facts.json and the install's stamps.
    inline          = ["python3 /var/lib/imagebuild/check.py --phase build --expected /var/lib/imagebuild/expected.json",
                       "rm -rf -- /var/lib/imagebuild/payload /var/lib/imagebuild/install.sh /var/lib/imagebuild/check.py /var/lib/imagebuild/expected.json /tmp/imagebuild-inventory.py /tmp/imagebuild-inventory.json"]
  }

  post-processor "manifest" {
    output     = "${var.output_directory}-packer-manifest.json"
    strip_path = true
    custom_data = {
      family     = "workers-lts"
      spec_hash  = "c7dde3dcfd5ddf4577c0731e0157a9993a06c798fca03c94322b0ee9617cb584"
      containerd = "2.3.7"
    }
  }
}
