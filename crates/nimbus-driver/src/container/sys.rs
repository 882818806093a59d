//! The Linux system calls the container launcher needs and std does not wrap: namespaces
//! (`clone3`, `setns`), the mount API (`mount`, `open_tree`, `move_mount`, `mount_setattr`,
//! `fsopen`/`fsconfig`/`fsmount`, `pivot_root`), path resolution that stays inside a root
//! (`openat2` with `RESOLVE_IN_ROOT`), credentials and capabilities, seccomp, fd passing and the
//! cgroup eBPF calls.
//!
//! This is the only module of the driver with `unsafe` code. Every wrapper is a single system
//! call whose pointer arguments come from Rust references or `CString`s that outlive the call,
//! and which reports failure as `std::io::Error` from `errno`; nothing here keeps raw pointers.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// `path` as a C string (paths with NUL bytes cannot exist on Linux).
pub fn cstr(path: impl AsRef<Path>) -> io::Result<CString> {
    CString::new(path.as_ref().as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

fn check(rc: libc::c_long) -> io::Result<libc::c_long> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn check_int(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    let fd = RawFd::try_from(check(fd)?).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ptr(s: Option<&CStr>) -> *const libc::c_char {
    s.map_or(std::ptr::null(), CStr::as_ptr)
}

/// `clone3` with `flags` (namespace flags) and `SIGCHLD` as exit signal, fork-style: `Ok(0)` in
/// the child, the child's pid in the parent. Only sound in a single-threaded process (the
/// launcher), where the child may go on running ordinary Rust code.
pub fn clone3(flags: u64) -> io::Result<libc::pid_t> {
    // SAFETY: all-zero is a valid `clone_args` (no stack, no pidfd, no tid pointers).
    let mut args: libc::clone_args = unsafe { std::mem::zeroed() };
    args.flags = flags;
    args.exit_signal = libc::SIGCHLD as u64;
    // SAFETY: `args` is a valid clone_args of the size passed; without CLONE_VM the child gets
    // a copy of our address space and returns here like fork().
    let rc = unsafe { libc::syscall(libc::SYS_clone3, &mut args as *mut libc::clone_args, std::mem::size_of::<libc::clone_args>()) };
    check(rc).map(|p| p as libc::pid_t)
}

/// Moves the calling thread into the network namespace `fd` refers to.
pub fn setns_net(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: a plain system call on a descriptor we own; it changes only this thread's namespace.
    let rc = unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(fd), libc::CLONE_NEWNET) };
    check_int(rc).map(drop)
}

pub fn mount(src: Option<&CStr>, target: &CStr, fstype: Option<&CStr>, flags: libc::c_ulong, data: Option<&CStr>) -> io::Result<()> {
    // SAFETY: every pointer is a NUL-terminated string that lives across the call, or null.
    check_int(unsafe { libc::mount(ptr(src), target.as_ptr(), ptr(fstype), flags, ptr(data).cast()) }).map(drop)
}

pub fn umount2(target: &CStr, flags: libc::c_int) -> io::Result<()> {
    // SAFETY: `target` is a valid C string.
    check_int(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

pub fn pivot_root(new_root: &CStr, put_old: &CStr) -> io::Result<()> {
    // SAFETY: both are valid C strings.
    check(unsafe { libc::syscall(libc::SYS_pivot_root, new_root.as_ptr(), put_old.as_ptr()) }).map(drop)
}

pub const OPEN_TREE_CLONE: u32 = 1;
pub const AT_RECURSIVE: u32 = 0x8000;
pub const MOVE_MOUNT_F_EMPTY_PATH: u32 = 0x4;
pub const MOVE_MOUNT_T_EMPTY_PATH: u32 = 0x40;
pub const MOUNT_ATTR_RDONLY: u64 = 0x1;
pub const MOUNT_ATTR_NOSUID: u64 = 0x2;
pub const MOUNT_ATTR_NODEV: u64 = 0x4;
pub const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// `open_tree(dirfd, path, flags)`: with [`OPEN_TREE_CLONE`], a detached copy of the mount at
/// `path` (a bind mount not attached anywhere yet).
pub fn open_tree(path: &CStr, flags: u32) -> io::Result<OwnedFd> {
    // SAFETY: valid C string; the flags are plain integers.
    owned(unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags | libc::O_CLOEXEC as u32) })
}

#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// Sets mount attributes on the mount `fd` refers to (and below it with `recursive`); with
/// [`MOUNT_ATTR_IDMAP`], `userns` gives the mapping (the mount must not be attached yet).
pub fn mount_setattr(fd: &OwnedFd, recursive: bool, set: u64, userns: Option<&OwnedFd>) -> io::Result<()> {
    let attr = MountAttr { attr_set: set, attr_clr: 0, propagation: 0, userns_fd: userns.map_or(0, |u| u.as_raw_fd() as u64) };
    let flags = libc::AT_EMPTY_PATH as u32 | if recursive { AT_RECURSIVE } else { 0 };
    // SAFETY: `attr` is a live mount_attr of the size passed; the empty path is a C literal.
    check(unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            fd.as_raw_fd(),
            c"".as_ptr(),
            flags,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    })
    .map(drop)
}

pub fn fsopen(fstype: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid C string; FSOPEN_CLOEXEC = 1.
    owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), 1u32) })
}

pub fn fsconfig_string(fs: &OwnedFd, key: &CStr, value: &CStr) -> io::Result<()> {
    const FSCONFIG_SET_STRING: u32 = 1;
    // SAFETY: valid C strings.
    check(unsafe { libc::syscall(libc::SYS_fsconfig, fs.as_raw_fd(), FSCONFIG_SET_STRING, key.as_ptr(), value.as_ptr(), 0) }).map(drop)
}

pub fn fsconfig_create(fs: &OwnedFd) -> io::Result<()> {
    const FSCONFIG_CMD_CREATE: u32 = 6;
    // SAFETY: no pointers.
    check(unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd(),
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    })
    .map(drop)
}

/// The detached mount of a configured file system context.
pub fn fsmount(fs: &OwnedFd, attrs: u64) -> io::Result<OwnedFd> {
    // SAFETY: no pointers; FSMOUNT_CLOEXEC = 1.
    owned(unsafe { libc::syscall(libc::SYS_fsmount, fs.as_raw_fd(), 1u32, attrs) })
}

/// Attaches the detached mount `from` on the directory or file `to` (an `O_PATH` descriptor).
pub fn move_mount(from: &OwnedFd, to: &OwnedFd) -> io::Result<()> {
    // SAFETY: empty C string literals and descriptors we own.
    check(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            from.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH | MOVE_MOUNT_T_EMPTY_PATH,
        )
    })
    .map(drop)
}

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// `openat2(dirfd, path, flags, mode, resolve)`.
pub fn openat2(dirfd: &OwnedFd, path: &CStr, flags: libc::c_int, mode: u32, resolve: u64) -> io::Result<OwnedFd> {
    let how = OpenHow { flags: (flags | libc::O_CLOEXEC) as u64, mode: u64::from(mode), resolve };
    // SAFETY: `how` is a live open_how of the size passed and `path` a valid C string.
    owned(unsafe {
        libc::syscall(libc::SYS_openat2, dirfd.as_raw_fd(), path.as_ptr(), &how as *const OpenHow, std::mem::size_of::<OpenHow>())
    })
}

pub fn mkdirat(dirfd: &OwnedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string, descriptor we own.
    check_int(unsafe { libc::mkdirat(dirfd.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) }).map(drop)
}

/// Creates the regular file `name` in `dirfd` (never following a link there); `EEXIST` if
/// anything, a link included, has that name.
pub fn create_file_at(dirfd: &OwnedFd, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid C string, descriptor we own; the returned descriptor is owned right away.
    let fd = check_int(unsafe {
        libc::openat(
            dirfd.as_raw_fd(),
            name.as_ptr(),
            libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_WRONLY | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: the kernel just handed us this descriptor.
    drop(unsafe { OwnedFd::from_raw_fd(fd) });
    Ok(())
}

pub fn fchdir(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: descriptor we own.
    check_int(unsafe { libc::fchdir(fd.as_raw_fd()) }).map(drop)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    // SAFETY: pointer and length of a live byte slice.
    check_int(unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }).map(drop)
}

/// Closes every descriptor from `first` up.
pub fn close_from(first: u32) -> io::Result<()> {
    // SAFETY: no pointers; closes descriptors nothing in this single-threaded process still uses.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, 0u32) }).map(drop)
}

/// Marks every descriptor from `first` up close-on-exec.
pub fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: no pointers; only sets a flag on descriptors.
    check(unsafe { libc::syscall(libc::SYS_close_range, first, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) }).map(drop)
}

pub fn dup2(from: RawFd, to: RawFd) -> io::Result<()> {
    // SAFETY: plain descriptor numbers.
    check_int(unsafe { libc::dup2(from, to) }).map(drop)
}

pub fn setresuid(uid: u32) -> io::Result<()> {
    // SAFETY: raw syscall (not glibc's setxid broadcast, which a single-threaded process does
    // not need), integer arguments.
    check(unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) }).map(drop)
}

pub fn setresgid(gid: u32) -> io::Result<()> {
    // SAFETY: as for setresuid.
    check(unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) }).map(drop)
}

pub fn setgroups_empty() -> io::Result<()> {
    // SAFETY: a zero-length list.
    check(unsafe { libc::syscall(libc::SYS_setgroups, 0usize, std::ptr::null::<libc::gid_t>()) }).map(drop)
}

/// Removes capability `cap` from the bounding set (it can never be regained, even by root).
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_CAPBSET_DROP, libc::c_ulong::from(cap), 0, 0, 0) }).map(drop)
}

/// Whether `cap` is known to the running kernel (its bounding-set query answers).
pub fn cap_known(cap: u32) -> bool {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_CAPBSET_READ, libc::c_ulong::from(cap), 0, 0, 0) >= 0 }
}

pub fn ambient_clear() -> io::Result<()> {
    // SAFETY: prctl with integer arguments.
    check_int(unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Installs a classic-BPF seccomp filter on the calling thread without setting
/// `no_new_privs` (set-uid programs such as `sudo` must keep working inside an instance); the
/// kernel allows that to a caller with `CAP_SYS_ADMIN` in its user namespace.
pub fn seccomp_install(prog: &[seccompiler::sock_filter]) -> io::Result<()> {
    let len = u16::try_from(prog.len()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // seccompiler's sock_filter has the kernel's layout (u16, u8, u8, u32), like libc's.
    let fprog = libc::sock_fprog { len, filter: prog.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the program.
    check_int(unsafe { libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER as libc::c_ulong, &fprog as *const libc::sock_fprog) })
        .map(drop)
}

/// Replaces the process image; returns only on failure.
pub fn execve(path: &CStr, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut a: Vec<*const libc::c_char> = argv.iter().map(|s| s.as_ptr()).collect();
    a.push(std::ptr::null());
    let mut e: Vec<*const libc::c_char> = envp.iter().map(|s| s.as_ptr()).collect();
    e.push(std::ptr::null());
    // SAFETY: NULL-terminated arrays of valid C strings that live across the call.
    unsafe { libc::execve(path.as_ptr(), a.as_ptr(), e.as_ptr()) };
    io::Error::last_os_error()
}

/// Waits for child `pid`; its exit code, or 128 + signal.
pub fn waitpid(pid: libc::pid_t) -> io::Result<i32> {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a live int.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc >= 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(if libc::WIFEXITED(status) { libc::WEXITSTATUS(status) } else { 128 + libc::WTERMSIG(status) })
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: integer arguments.
    check_int(unsafe { libc::kill(pid, sig) }).map(drop)
}

/// Ignores signal `sig` in this process (and, as ignored dispositions survive `exec`, in what
/// it execs unless that resets it).
pub fn ignore_signal(sig: libc::c_int) {
    // SAFETY: SIG_IGN is a valid disposition for the catchable signals we pass.
    unsafe { libc::signal(sig, libc::SIG_IGN) };
}

/// Restores the default disposition of `sig`.
pub fn default_signal(sig: libc::c_int) {
    // SAFETY: SIG_DFL is always valid.
    unsafe { libc::signal(sig, libc::SIG_DFL) };
}

/// A connected pair of `SOCK_SEQPACKET` unix sockets (close-on-exec).
pub fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    check_int(unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) })?;
    // SAFETY: the kernel just handed us both descriptors.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Sends one message (`data`, and `fd` as SCM_RIGHTS when given).
pub fn send_msg(sock: &OwnedFd, data: &[u8], fd: Option<&OwnedFd>) -> io::Result<()> {
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // Room for one descriptor, aligned as cmsghdr wants.
    let mut cbuf = [0u64; 4];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if let Some(fd) = fd {
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points at `cbuf` (32 bytes, more than `space`), so the first
        // header and its data lie inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
            std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<RawFd>(), fd.as_raw_fd());
        }
    }
    // SAFETY: `msg` points at live buffers for the duration of the call.
    check(unsafe { libc::sendmsg(sock.as_raw_fd(), &msg, libc::MSG_NOSIGNAL) } as libc::c_long).map(drop)
}

/// Receives one message into `buf`: its length (0 at end of stream) and the descriptor it
/// carried, if any.
pub fn recv_msg(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    recv_flags(sock, buf, 0)
}

/// [`recv_msg`] without waiting: `WouldBlock` when nothing is queued.
pub fn recv_msg_nowait(sock: &OwnedFd, buf: &mut [u8]) -> io::Result<(usize, Option<OwnedFd>)> {
    recv_flags(sock, buf, libc::MSG_DONTWAIT)
}

fn recv_flags(sock: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<(usize, Option<OwnedFd>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut cbuf = [0u64; 4];
    // SAFETY: all-zero is a valid msghdr.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: `msg` points at live buffers for the duration of the call.
        let rc = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC | flags) };
        if rc >= 0 {
            break rc as usize;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    };
    let mut fd = None;
    // SAFETY: the CMSG macros walk the control buffer the kernel filled in, within
    // msg_controllen; a SCM_RIGHTS header carries at least one descriptor.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        if !c.is_null() && (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
            let raw = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<RawFd>());
            fd = Some(OwnedFd::from_raw_fd(raw));
        }
    }
    Ok((n, fd))
}

// ---- cgroup eBPF (device programs) ---------------------------------------------------------

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_QUERY: libc::c_long = 16;
pub const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
pub const BPF_CGROUP_DEVICE: u32 = 6;
pub const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

/// Loads an eBPF program (`insns`: 8-byte instructions) of `prog_type`; on a verifier refusal
/// the error carries the verifier's log.
pub fn bpf_prog_load(prog_type: u32, insns: &[u8], name: &str) -> io::Result<OwnedFd> {
    if insns.len() % 8 != 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "eBPF program length is not a multiple of 8"));
    }
    let mut log = vec![0u8; 64 * 1024];
    let mut prog_name = [0u8; 16];
    for (d, s) in prog_name.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    let attr = ProgLoadAttr {
        prog_type,
        insn_cnt: (insns.len() / 8) as u32,
        insns: insns.as_ptr() as u64,
        license: c"Apache-2.0".as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name,
        ..ProgLoadAttr::default()
    };
    // SAFETY: `attr` and the buffers it points at (program, license, log) live across the call.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>()) };
    match owned(rc) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let end = log.iter().position(|b| *b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]).trim().to_owned();
            Err(io::Error::new(e.kind(), format!("{e}{}{text}", if text.is_empty() { "" } else { ": " })))
        }
    }
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Attaches program `prog` to the cgroup directory `cgroup` as `attach_type`.
pub fn bpf_prog_attach(prog: &OwnedFd, cgroup: &OwnedFd, attach_type: u32, flags: u32) -> io::Result<()> {
    let attr = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type,
        attach_flags: flags,
        replace_bpf_fd: 0,
    };
    // SAFETY: `attr` lives across the call.
    check(unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, &attr as *const ProgAttachAttr, std::mem::size_of::<ProgAttachAttr>()) })
        .map(drop)
}

#[repr(C)]
#[derive(Default)]
struct ProgQueryAttr {
    target_fd: u32,
    attach_type: u32,
    query_flags: u32,
    attach_flags: u32,
    prog_ids: u64,
    prog_cnt: u32,
}

/// How many programs of `attach_type` are attached to the cgroup directory `cgroup` itself.
pub fn bpf_prog_count(cgroup: &OwnedFd, attach_type: u32) -> io::Result<u32> {
    let mut ids = [0u32; 64];
    let mut attr = ProgQueryAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_type,
        prog_ids: ids.as_mut_ptr() as u64,
        prog_cnt: ids.len() as u32,
        ..ProgQueryAttr::default()
    };
    // SAFETY: `attr` and `ids` live across the call; the kernel writes at most prog_cnt ids.
    check(unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_QUERY, &mut attr as *mut ProgQueryAttr, std::mem::size_of::<ProgQueryAttr>()) })?;
    Ok(attr.prog_cnt)
}

/// `open(path, O_PATH | O_DIRECTORY)` as an owned descriptor.
pub fn open_dir_path(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: valid C string; the descriptor is owned right away.
    let fd = check_int(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just handed us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `open(path, O_RDONLY | O_DIRECTORY)` (what cgroup eBPF attach wants).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = cstr(path)?;
    // SAFETY: valid C string; the descriptor is owned right away.
    let fd = check_int(unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) })?;
    // SAFETY: the kernel just handed us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `/proc/self/fd/N` of `fd`: a path the kernel resolves to exactly that file, for calls that
/// take paths (classic `mount(2)`).
pub fn fd_path(fd: &OwnedFd) -> CString {
    // Digits only: cannot contain NUL.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}
