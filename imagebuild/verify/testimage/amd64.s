# The program of verify's test image: one static x86-64 Linux executable, no libc, no loader.
#
# The applet is the base name of argv[0] (the image links /bin/echo, /bin/sleep, ... to it):
#   echo ARG...   write the ARGs joined by spaces and a newline; exit 0 (1 if the write fails)
#   sleep N       sleep N seconds (decimal digits) or `infinity`; exit 0 (1 and a message on a bad N)
#   pause         wait for signals forever: the process a pod sandbox keeps up
#   true, false   exit 0, exit 1
#   anything else a usage line on stderr, exit 127
# In every applet SIGTERM and SIGINT end the process with status 0 (as Kubernetes' pause does:
# PID 1 of a container ignores signals it has no handler for) and SIGCHLD reaps children (a
# sandbox is PID 1 of its pod).
#
# This file is the whole executable, ELF header and program headers included, so
#   as --64 -o amd64.o amd64.s && objcopy -O binary -j .text amd64.o amd64.bin
# leaves no layout to a linker: the bytes are the instructions' encodings and the data written
# here (measured with binutils 2.40). `python -m devtools testimage` runs that, and
# tests/test_testimage.py checks that the committed amd64.bin is what this source gives.

        .set BASE, 0x400000             # load address of the file's first byte
        .set SYS_write, 1
        .set SYS_rt_sigaction, 13
        .set SYS_rt_sigreturn, 15
        .set SYS_pause, 34
        .set SYS_nanosleep, 35
        .set SYS_wait4, 61
        .set SYS_exit_group, 231
        .set SA_NOCLDSTOP, 1
        .set SA_RESTORER, 0x04000000
        .set SIGINT, 2
        .set SIGTERM, 15
        .set SIGCHLD, 17
        .set EINTR, 4
        .set WNOHANG, 1

        .text
ehdr:                                   # Elf64_Ehdr
        .byte   0x7f, 'E', 'L', 'F', 2, 1, 1, 0 # ELFCLASS64, little endian, version 1, System V
        .quad   0                       # ABI version, padding
        .word   2                       # e_type: ET_EXEC
        .word   62                      # e_machine: EM_X86_64
        .long   1                       # e_version
        .quad   BASE + _start - ehdr    # e_entry
        .quad   phdrs - ehdr            # e_phoff
        .quad   0                       # e_shoff: no section headers
        .long   0                       # e_flags
        .word   64, 56, 2               # e_ehsize, e_phentsize, e_phnum
        .word   0, 0, 0                 # e_shentsize, e_shnum, e_shstrndx
phdrs:                                  # Elf64_Phdr: the whole file, read + execute
        .long   1, 5                    # PT_LOAD, PF_R | PF_X
        .quad   0, BASE, BASE           # p_offset, p_vaddr, p_paddr
        .quad   end - ehdr, end - ehdr  # p_filesz, p_memsz
        .quad   0x1000                  # p_align
                                        # Elf64_Phdr: the stack is not executable
        .long   0x6474e551, 6           # PT_GNU_STACK, PF_R | PF_W
        .quad   0, 0, 0, 0, 0, 16

_start:
        mov     (%rsp), %r12            # r12 = argc
        lea     8(%rsp), %r13           # r13 = argv
        mov     $1, %r15d               # r15 = the fd `puts` writes to
        mov     $SIGTERM, %edi
        lea     on_stop(%rip), %rsi
        call    handle
        mov     $SIGINT, %edi
        lea     on_stop(%rip), %rsi
        call    handle
        mov     $SIGCHLD, %edi
        lea     on_child(%rip), %rsi
        call    handle

        mov     (%r13), %rsi            # rbx = base name of argv[0]
        test    %rsi, %rsi
        jz      usage
        mov     %rsi, %rbx
1:      lodsb
        test    %al, %al
        jz      2f
        cmp     $'/', %al
        jne     1b
        mov     %rsi, %rbx
        jmp     1b
2:      lea     s_echo(%rip), %rdi
        call    streq
        je      echo
        lea     s_sleep(%rip), %rdi
        call    streq
        je      sleep
        lea     s_pause(%rip), %rdi
        call    streq
        je      pause
        lea     s_true(%rip), %rdi
        call    streq
        je      success
        lea     s_false(%rip), %rdi
        call    streq
        je      failure
usage:
        mov     $2, %r15d
        lea     s_usage(%rip), %rsi
        call    puts
        mov     $127, %edi
        jmp     exit

echo:
        mov     $1, %r14d               # r14 = index of the argument
3:      cmp     %r12, %r14
        jae     4f
        mov     (%r13,%r14,8), %rsi
        call    puts
        inc     %r14
        cmp     %r12, %r14
        jae     4f
        lea     s_space(%rip), %rsi
        call    puts
        jmp     3b
4:      lea     s_newline(%rip), %rsi
        call    puts
        jmp     success

sleep:
        cmp     $2, %r12
        jne     bad_interval
        mov     8(%r13), %rbx
        lea     s_infinity(%rip), %rdi
        call    streq
        je      pause
        mov     %rbx, %rsi
        cmpb    $0, (%rsi)
        je      bad_interval
        xor     %eax, %eax              # rax = seconds
5:      movzbl  (%rsi), %ecx
        test    %ecx, %ecx
        jz      6f
        sub     $'0', %ecx
        cmp     $9, %ecx
        ja      bad_interval
        imul    $10, %rax, %rax
        jo      bad_interval
        add     %rcx, %rax
        jo      bad_interval
        inc     %rsi
        jmp     5b
6:      push    $0                      # struct timespec {tv_sec = rax, tv_nsec = 0}
        push    %rax
        mov     %rsp, %rdi              # the remainder is written over the request,
        mov     %rsp, %rsi              # so an interrupted sleep goes on with what is left
7:      mov     $SYS_nanosleep, %eax
        syscall
        cmp     $-EINTR, %rax
        je      7b
        test    %rax, %rax
        jnz     failure
        jmp     success

bad_interval:
        mov     $2, %r15d
        lea     s_bad_interval(%rip), %rsi
        call    puts
        jmp     failure

pause:
        mov     $SYS_pause, %eax
        syscall
        jmp     pause

failure:
        mov     $1, %edi
        jmp     exit
on_stop:                                # signal handler: SIGTERM, SIGINT
success:
        xor     %edi, %edi
exit:
        mov     $SYS_exit_group, %eax
        syscall

on_child:                               # signal handler: reap every exited child
        mov     $-1, %rdi
        xor     %esi, %esi
        mov     $WNOHANG, %edx
        xor     %r10d, %r10d
        mov     $SYS_wait4, %eax
        syscall
        test    %rax, %rax
        jg      on_child
        ret                             # into `restorer`
restorer:
        mov     $SYS_rt_sigreturn, %eax
        syscall

# handle: rt_sigaction(edi, {handler rsi, SA_RESTORER | SA_NOCLDSTOP, restorer, empty mask})
handle:
        sub     $32, %rsp
        mov     %rsi, (%rsp)
        movq    $SA_RESTORER | SA_NOCLDSTOP, 8(%rsp)
        lea     restorer(%rip), %rax
        mov     %rax, 16(%rsp)
        movq    $0, 24(%rsp)
        mov     %rsp, %rsi
        xor     %edx, %edx
        mov     $8, %r10d               # sizeof(sigset_t) in the kernel
        mov     $SYS_rt_sigaction, %eax
        syscall
        add     $32, %rsp
        ret

# streq: ZF set when the NUL-terminated strings at rbx and rdi are equal (clobbers rax, rcx, rdi)
streq:
        mov     %rbx, %rcx
8:      mov     (%rcx), %al
        cmp     (%rdi), %al
        jne     9f
        inc     %rcx
        inc     %rdi
        test    %al, %al
        jnz     8b
9:      ret

# puts: write the NUL-terminated string at rsi to fd r15 (whole, across short writes and EINTR);
# a failed write ends the process with status 1 (clobbers rax, rcx, rdx, rsi, rdi, r11)
puts:
        mov     %rsi, %rdx
10:     cmpb    $0, (%rdx)
        je      11f
        inc     %rdx
        jmp     10b
11:     sub     %rsi, %rdx
        jz      13f
12:     mov     %r15d, %edi
        mov     $SYS_write, %eax
        syscall
        cmp     $-EINTR, %rax
        je      12b
        test    %rax, %rax
        jle     failure
        add     %rax, %rsi
        sub     %rax, %rdx
        jnz     12b
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
