# The escape probe: run inside an instance as its root (sudo python3 - ARGS_JSON). Each check
# tries one way out of the instance and reports ["blocked", how] when the attempt was refused
# or ["open", what happened] when it got through. Attempts are made so that an open door does
# no harm to the host: limits and sysctls are written back with the value they already had,
# the clock call passes no time, device nodes are only opened and read.
#
# Input (JSON): disk [major, minor] of the host's root disk; marker (a host file path);
# foreign [strings that appear only in host or other-instance command lines]; cgroup "v1"|"v2";
# net (optional): victim, victim6, spoof_src, open_port, closed_port, gateway, host_ports,
# host_ip; fd_marker; env_marker.
#
# In a VM (vm: true, marker_content: the marker file's content) the host's disk and files are
# looked for by content: every block device the guest has, and a node with the host disk's
# numbers, are read for the host disk's data (a 4 KiB run of 0x42, the pattern of the loop
# device the suite makes) and for the marker's content; the guest has no cgroup file system
# mounted, so the limit files it lacks are reported absent. only (optional): the checks to
# run, the others are left out.
import ctypes, errno, fcntl, json, os, socket, stat, struct, subprocess, sys, time

# Hex, so that the markers in it never appear in any command line the probe scans.
A = json.loads(bytes.fromhex(sys.argv[1]))
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
res = {}
VM = bool(A.get("vm"))
ONLY = A.get("only")


def ename(e=None):
    e = ctypes.get_errno() if e is None else e
    return errno.errorcode.get(e, str(e))


def sc(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    return r, (ename() if r < 0 else None)


def check(name):
    def run(f):
        if ONLY is not None and name not in ONLY:
            return f
        try:
            res[name] = f()
        except Exception as e:  # a check that crashes is reported, never counted as blocked
            res[name] = ["error", repr(e)]
        return f
    return run


def by_errno(r, e, what, refusals=("EPERM", "EACCES", "EROFS")):
    """The listed errnos are refusals; success or any other errno means nothing refused."""
    if r >= 0:
        return ["open", f"{what} succeeded"]
    if e in refusals:
        return ["blocked", f"{what}: {e}"]
    return ["open", f"{what} was not refused by the instance's fences ({e})"]


def node(path, kind, major, minor):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    try:
        os.mknod(path, 0o600 | kind, os.makedev(major, minor))
    except OSError as e:
        return ["blocked", f"mknod: {ename(e.errno)}"]
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as e:
        os.unlink(path)
        if e.errno in (errno.EPERM, errno.EACCES):
            return ["blocked", f"mknod allowed, open refused: {ename(e.errno)}"]
        return ["open", f"mknod and open passed the device filter ({ename(e.errno)} from the driver)"]
    n = len(os.read(fd, 512))
    os.close(fd)
    os.unlink(path)
    return ["open", f"opened and read {n} bytes"]


HOST_DATA = b"\x42" * 4096
_scanned = []


def scan_guest_devices():
    """VM only: reads every block device of the guest (whole up to 256 MiB, else its first 64
    MiB, where an attached disk's start is) and a node with the host disk's numbers, from the
    device (its cached pages dropped first); where the host's data or the marker's content is
    found, and what was read."""
    if _scanned:
        return _scanned[0]
    wanted = {"data": HOST_DATA, "marker": A["marker_content"].encode()}
    found = {k: [] for k in wanted}
    read = []
    devs = []
    for name in sorted(os.listdir("/sys/class/block")):
        try:
            ma, mi = open(f"/sys/class/block/{name}/dev").read().strip().split(":")
            devs.append((name, int(ma), int(mi)))
        except OSError:
            pass
    devs.append(("the host disk's numbers", *A["disk"]))
    keep = max(len(w) for w in wanted.values()) - 1
    for name, ma, mi in devs:
        path = "/tmp/.escape-scan"
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        os.mknod(path, 0o600 | stat.S_IFBLK, os.makedev(ma, mi))
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            read.append(f"{name} {ma}:{mi} {ename(e.errno)}")
            os.unlink(path)
            continue
        try:
            try:
                fcntl.ioctl(fd, 0x1261)  # BLKFLSBUF
            except OSError:
                pass
            size = os.lseek(fd, 0, os.SEEK_END)
            os.lseek(fd, 0, os.SEEK_SET)
            limit = size if size <= 256 << 20 else 64 << 20
            done, tail = 0, b""
            while done < limit:
                b = os.read(fd, min(1 << 20, limit - done))
                if not b:
                    break
                buf = tail + b
                for k, w in wanted.items():
                    if w in buf and name not in found[k]:
                        found[k].append(name)
                tail = buf[-keep:]
                done += len(b)
            read.append(f"{name} {ma}:{mi} {done >> 10} of {size >> 10} KiB")
        finally:
            os.close(fd)
            os.unlink(path)
    _scanned.append((found, "; ".join(read)))
    return _scanned[0]


@check("host_disk")
def _():
    if not VM:
        return node("/tmp/.escape-disk", stat.S_IFBLK, *A["disk"])
    found, read = scan_guest_devices()
    if found["data"]:
        return ["open", f"the host disk's data is on the guest's {', '.join(found['data'])} ({read})"]
    return ["blocked", f"no guest device holds the host disk's data ({read})"]


@check("other_gpu")
def _():
    return node("/tmp/.escape-gpu", stat.S_IFCHR, 195, 1)


@check("host_files_via_proc")
def _():
    tried = ["/proc/1/root" + A["marker"]] + [f"/proc/{p}/root{A['marker']}" for p in range(2, 64)]
    if VM:
        tried = [f"/proc/{p}/root{A['marker']}" for p in os.listdir("/proc") if p.isdigit()]
    for p in tried:
        try:
            with open(p) as f:
                return ["open", f"read {p}: {f.read().strip()}"]
        except OSError:
            pass
    if not VM:
        return ["blocked", f"the host's {A['marker']} is not reachable through /proc/*/root"]
    found, read = scan_guest_devices()
    if found["marker"]:
        return ["open", f"the content of the host's {A['marker']} is on the guest's {', '.join(found['marker'])}"]
    return ["blocked", f"the host's {A['marker']} is not reachable through /proc/*/root of the guest's {len(tried)} processes, nor its content on any guest device"]


@check("foreign_processes")
def _():
    seen = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            cmd = open(f"/proc/{p}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if int(p) == os.getpid():
            continue
        for m in A["foreign"]:
            if m in cmd:
                seen.append(f"{p}: {cmd.strip()[:80]}")
    return ["open", "; ".join(seen)] if seen else ["blocked", "no host or other-instance process is visible"]


HIERARCHIES = ["freezer", "cpu", "cpuacct", "memory", "pids", "devices", "blkio", "cpuset", "name=systemd"]


@check("release_agent")
def _():
    if A["cgroup"] != "v1" and not VM:
        return ["blocked", "cgroup v2 has no release_agent"]
    notes = []
    for h in HIERARCHIES:
        d = "/tmp/.escape-cg-" + h.replace("=", "-")
        os.makedirs(d, exist_ok=True)
        if libc.mount(b"cgroup", d.encode(), b"cgroup", 0, h.encode()) != 0:
            notes.append(f"{h}: mount {ename()}")
            continue
        try:
            ra = os.path.join(d, "release_agent")
            if os.path.exists(ra):
                cur = open(ra, "rb").read().strip()
                try:
                    fd = os.open(ra, os.O_WRONLY)
                    os.write(fd, cur + b"\n")
                    os.close(fd)
                    return ["open", f"{h}: the {'guest kernel' if VM else 'host'}'s release_agent is writable"]
                except OSError as e:
                    notes.append(f"{h}: release_agent {ename(e.errno)}")
        finally:
            libc.umount2(d.encode(), 2)
    return ["blocked", "; ".join(notes) or "no hierarchy shows a release_agent"]


def write_back(path):
    cur = open(path, "rb").read()
    try:
        fd = os.open(path, os.O_WRONLY)
        os.write(fd, cur)
        os.close(fd)
        return True, "ok"
    except OSError as e:
        return False, ename(e.errno)


@check("raise_limits")
def _():
    if A["cgroup"] == "v1":
        files = ["/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/pids/pids.max"]
    else:
        files = ["/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/pids.max"]
    # Also through a fresh mount of the hierarchy, read-write.
    d = "/tmp/.escape-mem"
    os.makedirs(d, exist_ok=True)
    if A["cgroup"] == "v1" and libc.mount(b"cgroup", d.encode(), b"cgroup", 0, b"memory") == 0:
        files.append(d + "/memory.limit_in_bytes")
    if VM:
        # The guest's own cgroups, where it has any (nothing mounts /sys/fs/cgroup there).
        files = [f for f in files if os.path.exists(f)] or ["(no cgroup limit file in the guest)"]
        if A["cgroup"] != "v1" and libc.mount(b"cgroup", d.encode(), b"cgroup", 0, b"memory") == 0:
            files.append(d + "/memory.limit_in_bytes")
    out = []
    try:
        for f in files:
            if VM and not os.path.exists(f):
                out.append(f)
                continue
            ok, e = write_back(f)
            if ok:
                return ["open", f"{f} is writable"]
            out.append(f"{f}: {e}")
    finally:
        libc.umount2(d.encode(), 2)
    return ["blocked", "; ".join(out)]


@check("host_sysctl")
def _():
    ok, e = write_back("/proc/sys/vm/swappiness")
    return ["open", "vm.swappiness is writable"] if ok else ["blocked", f"vm.swappiness: {e}"]


@check("own_sysctl")
def _():
    # Not an escape: the instance's own network stack is its own (Docker inside needs this).
    ok, e = write_back("/proc/sys/net/ipv4/ip_forward")
    return ["allowed", "net.ipv4.ip_forward of its own namespace"] if ok else ["refused", e]


@check("set_clock")
def _():
    r, e = sc(164, 0, 0)  # settimeofday(NULL, NULL): the capability check without a change
    return by_errno(r, e, "settimeofday")


@check("load_module")
def _():
    r, e = sc(175, 0, 0, b"")  # init_module
    if r < 0 and e != "EPERM":
        return ["open", f"init_module not refused ({e})"]
    r2, e2 = sc(313, -1, b"", 0)  # finit_module
    if r2 < 0 and e2 != "EPERM":
        return ["open", f"finit_module not refused ({e2})"]
    return ["blocked", f"init_module {e}, finit_module {e2}"]


@check("kexec_load")
def _():
    r, e = sc(246, 0, 0, 0, 0)
    if r < 0 and e == "EPERM":
        r2, e2 = sc(320, -1, -1, 0, b"", 0)
        if r2 < 0 and e2 == "EPERM":
            return ["blocked", "kexec_load and kexec_file_load: EPERM"]
        return ["open", f"kexec_file_load not refused ({e2})"]
    return ["open", f"kexec_load not refused ({e})"]


@check("keyctl")
def _():
    r, e = sc(250, 0, -3, 0)  # KEYCTL_GET_KEYRING_ID of the session keyring
    return by_errno(r, e, "keyctl", ("ENOSYS",))


@check("bpf_load")
def _():
    insns = bytes.fromhex("b700000000000000" "9500000000000000")  # r0 = 0; exit
    ibuf = ctypes.create_string_buffer(insns)
    lic = ctypes.create_string_buffer(b"GPL")
    attr = struct.pack("IIQQIIQII", 1, 2, ctypes.addressof(ibuf), ctypes.addressof(lic), 0, 0, 0, 0, 0) + bytes(64)
    abuf = ctypes.create_string_buffer(attr)
    r, e = sc(321, 5, abuf, len(attr))  # BPF_PROG_LOAD of a socket filter
    if r >= 0:
        os.close(r)
    return by_errno(r, e, "bpf(BPF_PROG_LOAD)")


@check("kernel_log")
def _():
    r, e = sc(103, 10, 0, 0)  # syslog(SYSLOG_ACTION_SIZE_BUFFER)
    if r >= 0:
        return ["open", f"syslog answered (buffer of {r} bytes)"]
    for p in ["/dev/kmsg", "/proc/kmsg"]:
        try:
            fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK)
            try:
                data = os.read(fd, 256)
            except BlockingIOError:
                data = b""
            os.close(fd)
            if data:
                return ["open", f"read the host's kernel log from {p}"]
        except OSError:
            pass
    kn = node("/tmp/.escape-kmsg", stat.S_IFCHR, 1, 11)
    if kn[0] == "open":
        return ["open", "a /dev/kmsg of its own: " + kn[1]]
    return ["blocked", f"syslog {e}; no kernel log readable"]


@check("host_keyrings")
def _():
    out = []
    for p in ["/proc/keys", "/proc/kcore"]:
        try:
            st = os.stat(p)
        except FileNotFoundError:
            out.append(f"{p} absent")
            continue
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3):
            out.append(f"{p} masked")
            continue
        try:
            with open(p, "rb") as f:
                f.read(64)
            return ["open", f"{p} is readable"]
        except OSError as e:
            out.append(f"{p}: {ename(e.errno)}")
    return ["blocked", "; ".join(out)]


def connect(addr, port, src=None, timeout=1.5):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        if src:
            s.bind((src, 0))
        if fam == socket.AF_INET6:
            s.connect((addr, port, 0, socket.if_nametoindex("eth0")))
        else:
            s.connect((addr, port))
        return True, "connected"
    except OSError as e:
        return False, (ename(e.errno) if e.errno else type(e).__name__)
    finally:
        s.close()


def ip(*args):
    return subprocess.run(["ip", *args], capture_output=True, text=True)


N = A.get("net")
if N:
    @check("closed_port_v4")
    def _():
        ok, how = connect(N["victim"], N["closed_port"])
        return ["open", f"{N['victim']}:{N['closed_port']} {how}"] if ok else ["blocked", how]

    @check("other_org_private")
    def _():
        # Port 22 is open to 0.0.0.0/0 in the victim's rules; its private address must still
        # refuse an instance of another org (the org member check comes before the rules).
        ok, how = connect(N["victim"], 22)
        return ["open", f"{N['victim']}:22 {how}"] if ok else ["blocked", how]

    @check("closed_port_v6")
    def _():
        # Wait out duplicate address detection of our own link-local address.
        for _ in range(60):
            if "tentative" not in ip("-6", "addr", "show", "dev", "eth0").stdout:
                break
            time.sleep(0.1)
        ok, how = connect(N["victim6"], N["closed_port"])
        return ["open", f"[{N['victim6']}]:{N['closed_port']} {how}"] if ok else ["blocked", how]

    @check("spoof_ip")
    def _():
        ip("addr", "add", N["spoof_src"] + "/24", "dev", "eth0")
        time.sleep(0.2)
        try:
            ok, how = connect(N["victim"], N["open_port"], src=N["spoof_src"])
        finally:
            ip("addr", "del", N["spoof_src"] + "/24", "dev", "eth0")
        return ["open", f"reached {N['victim']}:{N['open_port']} from {N['spoof_src']}"] if ok else ["blocked", how]

    @check("spoof_mac")
    def _():
        mine = open("/sys/class/net/eth0/address").read().strip()
        ip("neigh", "flush", "dev", "eth0")
        r = ip("link", "set", "eth0", "address", "02:00:00:00:00:42")
        if r.returncode != 0:
            return ["blocked", "cannot change the MAC: " + r.stderr.strip()]
        try:
            ok, how = connect(N["victim"], 22)
        finally:
            ip("link", "set", "eth0", "address", mine)
            ip("neigh", "flush", "dev", "eth0")
        return ["open", f"reached {N['victim']}:22 from MAC 02:00:00:00:00:42"] if ok else ["blocked", how]

    @check("spoof_arp")
    def _():
        # An ARP request to the gateway that claims the victim's address for our MAC: where it
        # lands, the host's neighbour entry for the victim now points at us (the Rust side reads
        # it). Sent three times, 50 ms apart.
        mac = bytes.fromhex(open("/sys/class/net/eth0/address").read().strip().replace(":", ""))
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        s.bind(("eth0", 0))
        sip, tip = socket.inet_aton(N["victim"]), socket.inet_aton(N["gateway"])
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, sip, b"\0" * 6, tip)
        for _ in range(3):
            s.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)
            time.sleep(0.05)
        s.close()
        return ["sent", "an ARP request claiming " + N["victim"]]

    @check("host_ports")
    def _():
        out = []
        for addr in [N["gateway"], N.get("host_ip")]:
            if not addr:
                continue
            for port in N["host_ports"]:
                ok, how = connect(addr, port, timeout=1.0)
                if ok:
                    return ["open", f"reached the host at {addr}:{port}"]
                out.append(f"{addr}:{port} {how}")
        return ["blocked", "; ".join(out)]


@check("inherited_fds")
def _():
    found = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                t = os.readlink(f"/proc/{pid}/fd/{fd}")
                if A["fd_marker"] in t:
                    found.append(f"{pid}/fd/{fd}")
        except OSError:
            pass
    return ["open", " ".join(found)] if found else ["blocked", "no descriptor of the agent's reached the instance"]


@check("agent_environment")
def _():
    env = open("/proc/1/environ", "rb").read().decode(errors="replace")
    return ["open", "the agent's environment is in PID 1's"] if A["env_marker"] in env else ["blocked", "PID 1's environment is its own"]


@check("host_paths_in_mountinfo")
def _():
    root = [l for l in open("/proc/self/mountinfo") if l.split()[4] == "/"]
    leak = [l for l in root if A["instance_dir"] in l]
    return ["open", leak[0][:200]] if leak else ["blocked", "the root mount names no host path"]


print(json.dumps(res))
