// The program of verify's test image for arm64: one static AArch64 Linux executable, no libc, no
// loader; the twin of amd64.s, applet for applet (see there for what each does):
//   echo ARG...   write the ARGs joined by spaces and a newline; exit 0 (1 if the write fails)
//   sleep N       sleep N seconds (decimal digits) or `infinity`; exit 0 (1 and a message on a bad N)
//   pause         wait for signals forever: the process a pod sandbox keeps up
//   true, false   exit 0, exit 1
//   anything else a usage line on stderr, exit 127
// SIGTERM and SIGINT end the process with status 0, SIGCHLD reaps children. AArch64 Linux has no
// pause(2): `pause` blocks in ppoll(NULL, 0, NULL, NULL), which only a signal ends.
//
// This file is the whole executable, ELF header and program headers included, so
//   aarch64-linux-gnu-as -o arm64.o arm64.s && aarch64-linux-gnu-objcopy -O binary -j .text arm64.o arm64.bin
// leaves no layout to a linker (measured with binutils 2.40). `python -m devtools
// testimage --arch arm64` runs that, and tests/test_testimage.py checks that the committed
// arm64.bin is what this source gives and runs it under qemu-user.

        .set BASE, 0x400000             // load address of the file's first byte
        .set SYS_ppoll, 73
        .set SYS_write, 64
        .set SYS_exit_group, 94
        .set SYS_nanosleep, 101
        .set SYS_rt_sigaction, 134
        .set SYS_rt_sigreturn, 139
        .set SYS_wait4, 260
        .set SA_NOCLDSTOP, 1
        .set SA_RESTORER, 0x04000000
        .set SIGINT, 2
        .set SIGTERM, 15
        .set SIGCHLD, 17
        .set EINTR, 4
        .set WNOHANG, 1

        .text
ehdr:                                   // Elf64_Ehdr
        .byte   0x7f, 'E', 'L', 'F', 2, 1, 1, 0 // ELFCLASS64, little endian, version 1, System V
        .quad   0                       // ABI version, padding
        .hword  2                       // e_type: ET_EXEC
        .hword  183                     // e_machine: EM_AARCH64
        .word   1                       // e_version
        .quad   BASE + _start - ehdr    // e_entry
        .quad   phdrs - ehdr            // e_phoff
        .quad   0                       // e_shoff: no section headers
        .word   0                       // e_flags
        .hword  64, 56, 2               // e_ehsize, e_phentsize, e_phnum
        .hword  0, 0, 0                 // e_shentsize, e_shnum, e_shstrndx
phdrs:                                  // Elf64_Phdr: the whole file, read + execute
        .word   1, 5                    // PT_LOAD, PF_R | PF_X
        .quad   0, BASE, BASE           // p_offset, p_vaddr, p_paddr
        .quad   end - ehdr, end - ehdr  // p_filesz, p_memsz
        .quad   0x10000                 // p_align (64 KiB: any arm64 page size)
                                        // Elf64_Phdr: the stack is not executable
        .word   0x6474e551, 6           // PT_GNU_STACK, PF_R | PF_W
        .quad   0, 0, 0, 0, 0, 16

_start:
        ldr     x19, [sp]               // x19 = argc
        add     x20, sp, #8             // x20 = argv
        mov     x21, #1                 // x21 = the fd `puts` writes to
        mov     x0, #SIGTERM
        adr     x1, on_stop
        bl      handle
        mov     x0, #SIGINT
        adr     x1, on_stop
        bl      handle
        mov     x0, #SIGCHLD
        adr     x1, on_child
        bl      handle

        ldr     x1, [x20]               // x22 = base name of argv[0]
        cbz     x1, usage
        mov     x22, x1
1:      ldrb    w2, [x1], #1
        cbz     w2, 2f
        cmp     w2, #'/'
        b.ne    1b
        mov     x22, x1
        b       1b
2:      adr     x0, s_echo
        bl      streq
        b.eq    echo
        adr     x0, s_sleep
        bl      streq
        b.eq    sleep
        adr     x0, s_pause
        bl      streq
        b.eq    pause
        adr     x0, s_true
        bl      streq
        b.eq    success
        adr     x0, s_false
        bl      streq
        b.eq    failure
usage:
        mov     x21, #2
        adr     x1, s_usage
        bl      puts
        mov     x0, #127
        b       exit

echo:
        mov     x23, #1                 // x23 = index of the argument
3:      cmp     x23, x19
        b.hs    4f
        ldr     x1, [x20, x23, lsl #3]
        bl      puts
        add     x23, x23, #1
        cmp     x23, x19
        b.hs    4f
        adr     x1, s_space
        bl      puts
        b       3b
4:      adr     x1, s_newline
        bl      puts
        b       success

sleep:
        cmp     x19, #2
        b.ne    bad_interval
        ldr     x22, [x20, #8]
        adr     x0, s_infinity
        bl      streq
        b.eq    pause
        mov     x1, x22
        ldrb    w2, [x1]
        cbz     w2, bad_interval
        mov     x3, #0                  // x3 = seconds (kept within a signed 64-bit time_t)
        mov     x4, #10
5:      ldrb    w2, [x1], #1
        cbz     w2, 6f
        sub     w2, w2, #'0'
        cmp     w2, #9
        b.hi    bad_interval
        umulh   x5, x3, x4
        cbnz    x5, bad_interval
        mul     x3, x3, x4
        tbnz    x3, #63, bad_interval
        adds    x3, x3, w2, uxtw
        b.vs    bad_interval
        b       5b
6:      stp     x3, xzr, [sp, #-16]!    // struct timespec {tv_sec = x3, tv_nsec = 0}
7:      mov     x0, sp                  // the remainder is written over the request,
        mov     x1, sp                  // so an interrupted sleep goes on with what is left
        mov     x8, #SYS_nanosleep
        svc     #0
        cmn     x0, #EINTR
        b.eq    7b
        cbnz    x0, failure
        b       success

bad_interval:
        mov     x21, #2
        adr     x1, s_bad_interval
        bl      puts
        b       failure

pause:
        mov     x0, #0                  // ppoll(NULL, 0, NULL, NULL): no fds, no timeout, same mask
        mov     x1, #0
        mov     x2, #0
        mov     x3, #0
        mov     x8, #SYS_ppoll
        svc     #0
        b       pause

failure:
        mov     x0, #1
        b       exit
on_stop:                                // signal handler: SIGTERM, SIGINT
success:
        mov     x0, #0
exit:
        mov     x8, #SYS_exit_group
        svc     #0

on_child:                               // signal handler: reap every exited child
        mov     x0, #-1
        mov     x1, #0
        mov     x2, #WNOHANG
        mov     x3, #0
        mov     x8, #SYS_wait4
        svc     #0
        cmp     x0, #0
        b.gt    on_child
        ret                             // into `restorer` (the kernel set x30 to sa_restorer)
restorer:
        mov     x8, #SYS_rt_sigreturn
        svc     #0

// handle: rt_sigaction(x0, {handler x1, SA_RESTORER | SA_NOCLDSTOP, restorer, empty mask})
handle:
        sub     sp, sp, #32
        str     x1, [sp]
        movz    x2, #SA_NOCLDSTOP
        movk    x2, #(SA_RESTORER >> 16), lsl #16
        str     x2, [sp, #8]
        adr     x2, restorer
        str     x2, [sp, #16]
        str     xzr, [sp, #24]
        mov     x1, sp
        mov     x2, #0
        mov     x3, #8                  // sizeof(sigset_t) in the kernel
        mov     x8, #SYS_rt_sigaction
        svc     #0
        add     sp, sp, #32
        ret

// streq: Z set when the NUL-terminated strings at x22 and x0 are equal (clobbers x0-x3)
streq:
        mov     x1, x22
8:      ldrb    w2, [x1], #1
        ldrb    w3, [x0], #1
        cmp     w2, w3
        b.ne    9f
        cbnz    w2, 8b                  // cbnz leaves the flags of the cmp: equal
9:      ret

// puts: write the NUL-terminated string at x1 to fd x21 (whole, across short writes and EINTR);
// a failed write ends the process with status 1 (clobbers x0-x3, x8)
puts:
        mov     x2, x1
10:     ldrb    w3, [x2]
        cbz     w3, 11f
        add     x2, x2, #1
        b       10b
11:     subs    x2, x2, x1
        b.eq    13f
12:     mov     x0, x21
        mov     x8, #SYS_write
        svc     #0
        cmn     x0, #EINTR
        b.eq    12b
        cmp     x0, #0
        b.le    failure
        add     x1, x1, x0
        subs    x2, x2, x0
        b.ne    12b
13:     ret

s_echo:         .asciz  "echo"
s_sleep:        .asciz  "sleep"
s_pause:        .asciz  "pause"
s_true:         .asciz  "true"
s_false:        .asciz  "false"
s_infinity:     .asciz  "infinity"
s_space:        .asciz  " "
s_newline:      .asciz  "\n"
s_bad_interval: .asciz  "sleep: invalid time interval (use whole seconds or infinity)\n"
s_usage:        .asciz  "imagebuild-test: unknown applet (use echo, sleep, pause, true or false)\n"
end:
