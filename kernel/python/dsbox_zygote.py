"""dsbox zygote: preloads modules once, forks kernel children, joins them to sandboxes.

The zygote runs in a sandbox of its own (see docs/architecture.md, "Kernels: zygote +
join"): capabilities kept, no seccomp, never runs user code. It talks to the runtime over
a SOCK_SEQPACKET control socket: one JSON document per message, fds by SCM_RIGHTS.

Runtime -> zygote:
  {"type":"spawn","id":N,"plan":JoinPlan,"fds":["channel","pidfd","cgroup",...],
   "go":true} + fds
    ("go": the child waits for the byte b"G" on its channel before it joins: the runtime
    asks for the fork while the shell is still being set up and says go once it is ready)
  {"type":"ping","id":N}          {"type":"shutdown"}
Zygote -> runtime:
  {"type":"ready","pid":P,"python":"3.11.2","preloaded":[...],"failed":[[name,error]]}
  {"type":"spawned","id":N,"pid":P,"pidfd":true,"fork_ns":T} + the child's pidfd
  {"type":"spawn_failed","id":N,"step":S,"errno":E,"detail":D}
  {"type":"exited","id":N,"pid":P,"code":C|null,"signal":S|null}
  {"type":"pong","id":N,"children":K}      {"type":"error","detail":D}

A child applies the JoinPlan with join() and then serves cells (dsbox_kernel.serve) on
its channel. A step that fails is reported on the channel as
{"type":"join_error","step":S,"errno":E,"detail":D}, never as a traceback.
"""

import ctypes
import errno
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time

# Threads a BLAS or OpenMP runtime would start make fork() unsafe; pin them to one.
THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
MAX_MESSAGE = 1 << 20
MAX_FDS = 32

CLONE_NEWPID = 0x20000000
PR_CAPBSET_DROP = 24
PR_SET_SECCOMP = 22
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
SECCOMP_MODE_FILTER = 2
LANDLOCK_RULE_PATH_BENEATH = 1
LINUX_CAPABILITY_VERSION_3 = 0x20080522
BPF_MAXINSNS = 4096

# Syscalls without a glibc wrapper everywhere (or whose wrapper we avoid), by machine.
SYSCALLS = {
    "x86_64": {"setns": 308, "capset": 126, "landlock_create_ruleset": 444,
               "landlock_add_rule": 445, "landlock_restrict_self": 446},
    "aarch64": {"setns": 268, "capset": 91, "landlock_create_ruleset": 444,
                "landlock_add_rule": 445, "landlock_restrict_self": 446},
}


class JoinError(Exception):
    """A join step failed: reported as {step, errno, detail}."""

    def __init__(self, step, err, detail=""):
        Exception.__init__(self, "%s: %s" % (step, os.strerror(err) if err else detail))
        self.step = step
        self.errno = err
        self.detail = detail


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


class Sys:
    """The raw syscalls of the join, through ctypes (errno preserved)."""

    def __init__(self):
        self.libc = ctypes.CDLL(None, use_errno=True)
        self.libc.syscall.restype = ctypes.c_long
        self.libc.prctl.restype = ctypes.c_int
        machine = os.uname().machine
        if machine not in SYSCALLS:
            raise JoinError("arch", errno.ENOSYS, "unsupported machine %s" % machine)
        self.nr = SYSCALLS[machine]

    def syscall(self, step, name, *args):
        ctypes.set_errno(0)
        r = self.libc.syscall(ctypes.c_long(self.nr[name]), *args)
        if r < 0:
            raise JoinError(step, ctypes.get_errno() or errno.EINVAL)
        return r

    def prctl(self, step, option, arg2=0, arg3=0):
        ctypes.set_errno(0)
        r = self.libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(arg3),
                            ctypes.c_ulong(0), ctypes.c_ulong(0))
        if r < 0:
            raise JoinError(step, ctypes.get_errno() or errno.EINVAL)
        return r

    def setns(self, step, fd, flags):
        return self.syscall(step, "setns", ctypes.c_long(fd), ctypes.c_long(flags))


def pin_threads():
    for var in THREAD_VARS:
        os.environ[var] = "1"


def preload(modules, kernel):
    """Import the kernel's modules and `modules`; returns [[name, error], ...]."""
    import importlib
    failed = []
    # `resource`: the join's rlimits step; the rest: what the kernel uses.
    names = list(kernel.PRELOAD) + ["random", "resource"] + list(modules)
    if "matplotlib" in modules:
        # What users import, and the backend children render with.
        names += ["matplotlib.pyplot", "matplotlib.backends.backend_agg"]
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:
            failed.append([name, "%s: %s" % (type(e).__name__, e)])
    # Warm the join's reseed step here once (numpy's first seed() imports and builds
    # what every later one reuses); children reseed from the OS again.
    try:
        sys.modules["random"].seed()
        if "numpy.random" in sys.modules:
            sys.modules["numpy.random"].seed()
            reseed_numpy(sys.modules["numpy.random"])
    except Exception:
        pass
    gc.collect()
    gc.freeze()  # preloaded objects stay out of GC passes: no copy-on-write from the GC
    return failed


# ------------------------------------------------------------------------- join

def reseed_numpy(nprandom):
    """Give numpy's global generator (legacy `RandomState`, MT19937) a fresh state: 624
    words of OS entropy set as its key. Half the cost of `seed()` in a child (0.2 ms, not
    0.45: `seed()` builds a SeedSequence and arrays), and more entropy than seed()'s 128
    bits. Falls back to `seed()` where that state cannot be set."""
    try:
        import numpy
        key = numpy.frombuffer(os.urandom(624 * 4), dtype=numpy.uint32)
        nprandom.mtrand._rand._bit_generator.state = {
            "bit_generator": "MT19937", "state": {"key": key, "pos": 624}}
    except (ImportError, AttributeError, TypeError, ValueError):
        nprandom.seed()


def _check_plan(plan):
    def need(field, kind):
        value = plan.get(field)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise JoinError("plan", errno.EINVAL, "field %r is missing or has the wrong type"
                            % field)

    if not isinstance(plan, dict):
        raise JoinError("plan", errno.EINVAL, "the plan is not an object")
    for field, kind in (("namespaces", int), ("uid", int), ("gid", int), ("cwd", str),
                        ("env", list), ("rlimits", list), ("drop_capabilities", bool),
                        ("no_new_privs", bool)):
        need(field, kind)
    for pair in plan["env"]:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)
                and pair[0] and "=" not in pair[0] and "\0" not in pair[0] + pair[1]):
            raise JoinError("plan", errno.EINVAL, "bad env entry %r" % (pair,))
    for triple in plan["rlimits"]:
        if not (isinstance(triple, list) and len(triple) == 3
                and all(isinstance(x, int) and x >= 0 for x in triple)):
            raise JoinError("plan", errno.EINVAL, "bad rlimit %r" % (triple,))
    ll = plan.get("landlock")
    if ll is not None:
        if not isinstance(ll, dict) or not isinstance(ll.get("rules"), list):
            raise JoinError("plan", errno.EINVAL, "bad landlock plan")
        for key in ("abi", "handled_access_fs", "handled_access_net", "scoped"):
            if not isinstance(ll.get(key), int) or ll[key] < 0:
                raise JoinError("plan", errno.EINVAL, "bad landlock field %r" % key)
    bpf = plan.get("seccomp_bpf")
    if bpf is not None and not isinstance(bpf, str):
        raise JoinError("plan", errno.EINVAL, "seccomp_bpf is not a string")


def join(plan, channel, pidfd=None, cgroup_fds=(), sys_=None, steps=None):
    """Apply a JoinPlan in this (freshly forked, single-threaded) process.

    Returns the channel's new fd (3). Raises JoinError naming the failed step; its
    `channel` attribute is the channel's fd at that point (it moves to 3 on the way).
    `steps`: a list that receives (step, CLOCK_MONOTONIC ns) as each step ends.
    """
    where = {"channel": channel, "steps": steps}
    try:
        return _join(plan, where, pidfd, cgroup_fds, sys_ or Sys())
    except JoinError as e:
        e.channel = where["channel"]
        raise
    except BaseException as e:
        err = JoinError("internal", 0, "%s: %s" % (type(e).__name__, e))
        err.channel = where["channel"]
        raise err


def _join(plan, where, pidfd, cgroup_fds, s):
    channel = where["channel"]
    steps = where["steps"]
    mark = (lambda name: steps.append((name, time.monotonic_ns()))) if steps is not None \
        else (lambda name: None)
    _check_plan(plan)

    # 1. cgroup: before anything else, so every later allocation is charged to it.
    for fd in cgroup_fds:
        try:
            os.write(fd, b"0")
        except OSError as e:
            raise JoinError("cgroup", e.errno)

    mark("cgroup")
    # 2. The sandbox's namespaces (pid was entered by the zygote before fork).
    if plan["namespaces"]:
        if pidfd is None:
            raise JoinError("setns", errno.EBADF, "namespaces to join but no pidfd")
        s.setns("setns", pidfd, plan["namespaces"])

    mark("setns")
    # 3. Working directory (setns into a mount namespace moved us to its root).
    try:
        os.chdir(plan["cwd"])
    except OSError as e:
        raise JoinError("chdir", e.errno, plan["cwd"])

    mark("chdir")
    # 4. Only the channel survives, as fd 3; fds 0-2 are /dev/null until serve().
    try:
        if channel != 3:
            os.dup2(channel, 3, inheritable=False)
            channel = where["channel"] = 3
        os.closerange(4, 1 << 20)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            if null != fd:
                os.dup2(null, fd)
        if null > 2:
            os.close(null)
    except OSError as e:
        raise JoinError("close_fds", e.errno)

    mark("close_fds")
    # 5. Environment: exactly the plan's.
    try:
        # Key by key: 0.1 ms faster than clear(), whose popitem() iterates anew each time.
        environ = os.environ
        for key in list(environ):
            del environ[key]
        for key, value in plan["env"]:
            os.environ[key] = value
    except OSError as e:
        raise JoinError("env", e.errno)

    mark("env")
    # 6. rlimits.
    if plan["rlimits"]:
        import resource
        for res, soft, hard in plan["rlimits"]:
            lim = tuple(resource.RLIM_INFINITY if v >= (1 << 63) else v for v in (soft, hard))
            try:
                resource.setrlimit(res, lim)
            except (OSError, ValueError) as e:
                raise JoinError("rlimits", getattr(e, "errno", None) or errno.EINVAL,
                                "resource %d" % res)

    mark("rlimits")
    # 7. Fresh random state: every child of the zygote would otherwise draw the same numbers.
    try:
        if "random" in sys.modules:
            sys.modules["random"].seed()
        nprandom = sys.modules.get("numpy.random")
        if nprandom is not None:
            reseed_numpy(nprandom)
    except OSError as e:
        raise JoinError("reseed", e.errno)

    mark("reseed")
    # 8. landlock.
    if plan.get("landlock") is not None:
        _landlock(s, plan["landlock"])

    mark("landlock")
    # 9. Capabilities: bounding set and ambient set first (they need CAP_SETPCAP).
    if plan["drop_capabilities"]:
        for cap in range(64):
            try:
                s.prctl("capbset", PR_CAPBSET_DROP, cap)
            except JoinError as e:
                if e.errno == errno.EINVAL:  # past the last capability this kernel knows
                    break
                raise
        try:
            s.prctl("ambient", PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL)
        except JoinError as e:
            if e.errno != errno.EINVAL:  # EINVAL: kernel without ambient capabilities
                raise

    mark("capbset")
    # 10. Identity.
    for step, fn in (("setgroups", lambda: os.setgroups([])),
                     ("setresgid", lambda: os.setresgid(plan["gid"], plan["gid"], plan["gid"])),
                     ("setresuid", lambda: os.setresuid(plan["uid"], plan["uid"], plan["uid"]))):
        try:
            fn()
        except OSError as e:
            raise JoinError(step, e.errno)

    mark("ids")
    # 11. Nothing left in the effective, permitted or inheritable sets.
    if plan["drop_capabilities"]:
        header = ctypes.create_string_buffer(struct.pack("=Ii", LINUX_CAPABILITY_VERSION_3, 0))
        data = ctypes.create_string_buffer(24)
        s.syscall("capset", "capset", header, data)

    mark("capset")
    # 12. no_new_privs.
    if plan["no_new_privs"]:
        s.prctl("no_new_privs", PR_SET_NO_NEW_PRIVS, 1)

    mark("no_new_privs")
    # 13. seccomp, last: every step above needed syscalls the filter may block.
    bpf = plan.get("seccomp_bpf")
    if bpf:
        _seccomp(s, bpf)
    mark("seccomp")
    return channel


def _landlock(s, ll):
    abi = ll["abi"]
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    attr = struct.pack("=QQQ", ll["handled_access_fs"], ll["handled_access_net"],
                       ll["scoped"])[:size]
    attr_buf = ctypes.create_string_buffer(attr, size)
    ruleset = s.syscall("landlock_create_ruleset", "landlock_create_ruleset", attr_buf,
                        ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        for rule in ll["rules"]:
            path = rule.get("path") if isinstance(rule, dict) else None
            access = rule.get("access") if isinstance(rule, dict) else None
            if not isinstance(path, str) or not isinstance(access, int) or access < 0:
                raise JoinError("landlock_add_rule", errno.EINVAL, "bad rule %r" % (rule,))
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                raise JoinError("landlock_open", e.errno, path)
            try:
                # struct landlock_path_beneath_attr is packed: u64 allowed_access, s32 fd.
                buf = ctypes.create_string_buffer(struct.pack("=Qi", access, fd), 12)
                try:
                    s.syscall("landlock_add_rule", "landlock_add_rule", ctypes.c_long(ruleset),
                              ctypes.c_long(LANDLOCK_RULE_PATH_BENEATH), buf, ctypes.c_long(0))
                except JoinError as e:
                    e.detail = path
                    raise
            finally:
                os.close(fd)
        s.syscall("landlock_restrict_self", "landlock_restrict_self", ctypes.c_long(ruleset),
                  ctypes.c_long(0))
    finally:
        os.close(ruleset)


def _seccomp(s, bpf_b64):
    import base64
    try:
        bpf = base64.b64decode(bpf_b64, validate=True)
    except ValueError:
        raise JoinError("seccomp", errno.EINVAL, "seccomp_bpf is not base64")
    count = len(bpf) // 8
    if len(bpf) % 8 or not 0 < count <= BPF_MAXINSNS:
        raise JoinError("seccomp", errno.EINVAL, "%d bytes is not a BPF program" % len(bpf))
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    s.prctl("seccomp", PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog))


# ------------------------------------------------------------------------ zygote

def _frame(obj):
    body = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return len(body).to_bytes(4, "big") + body


def report_join_error(channel, step, err, detail):
    """Tell the runtime (on the kernel channel) which step failed, then the child exits."""
    data = _frame({"type": "join_error", "step": str(step)[:200], "errno": int(err),
                   "detail": str(detail)[:2000]})
    try:
        while data:
            data = data[os.write(channel, data):]
    except OSError:
        pass


GO = b"G"
NO_GO_EXIT = 113


def wait_go(channel):
    """Block until the runtime's go-ahead (GO) arrives on the channel.

    The runtime forks a child before the shell it joins is set up; until GO, the shell's
    namespaces, cgroup and mounts may be half made, so the child touches nothing of it.
    Anything else (EOF: the runtime gave up, the shell failed; another byte; a signal)
    ends the child at once, without a word on the channel and before any join step.
    """
    try:
        got = os.read(channel, 1)
    except BaseException:
        got = b""
    if got != GO:
        os._exit(NO_GO_EXIT)


class Zygote:
    def __init__(self, control_fd, kernel):
        self.sock = socket.socket(fileno=control_fd)
        os.set_inheritable(control_fd, False)
        self.kernel = kernel
        self.children = {}
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.sys = Sys()
        self.received_ns = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def send(self, obj):
        self.sock.send(json.dumps(obj, separators=(",", ":")).encode("utf-8"))

    def run(self, preloaded, failed):
        # SIGCHLD wakes the loop through the wakeup fd; the handler itself does nothing.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.send({"type": "ready", "pid": os.getpid(), "python": sys.version.split()[0],
                   "preloaded": list(preloaded), "failed": failed})
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN)
        poller.register(self.wake_r, select.POLLIN)
        while True:
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self.wake_r:
                    try:
                        while os.read(self.wake_r, 512):
                            pass
                    except OSError:
                        pass
            self.reap()
            if any(fd == self.sock.fileno() for fd, _ in events):
                if not self.handle_request():
                    return

    def reap(self):
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            spawn_id = self.children.pop(pid, None)
            code = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
            sig = os.WTERMSIG(status) if os.WIFSIGNALED(status) else None
            self.send({"type": "exited", "id": spawn_id, "pid": pid, "code": code,
                       "signal": sig})

    def handle_request(self):
        try:
            msg, fds, _flags, _addr = socket.recv_fds(self.sock, MAX_MESSAGE, MAX_FDS)
        except InterruptedError:
            return True
        self.received_ns = time.monotonic_ns()
        if not msg:
            return False  # the runtime closed the control socket
        try:
            req = json.loads(msg)
            kind = req["type"]
        except (ValueError, KeyError, TypeError) as e:
            for fd in fds:
                os.close(fd)
            self.send({"type": "error", "detail": "malformed request: %s" % e})
            return True
        if kind == "spawn":
            self.spawn(req, fds)
        else:
            for fd in fds:
                os.close(fd)
            if kind == "ping":
                self.send({"type": "pong", "id": req.get("id"), "children": len(self.children)})
            elif kind == "shutdown":
                return False
            else:
                self.send({"type": "error", "detail": "unknown request type %r" % (kind,)})
        return True

    def spawn(self, req, fds):
        sid = req.get("id")
        roles = req.get("fds")
        try:
            if not isinstance(roles, list) or len(roles) != len(fds):
                raise JoinError("fds", errno.EINVAL, "%d fds received, roles %r"
                                % (len(fds), roles))
            if roles.count("channel") != 1 or roles.count("pidfd") > 1 or any(
                    r not in ("channel", "pidfd", "cgroup") for r in roles):
                raise JoinError("fds", errno.EINVAL, "roles must be one channel, at most "
                                "one pidfd, any cgroup: %r" % (roles,))
        except JoinError as e:
            for fd in fds:
                os.close(fd)
            self.send({"type": "spawn_failed", "id": sid, "step": e.step, "errno": e.errno,
                       "detail": e.detail})
            return
        channel = fds[roles.index("channel")]
        pidfd = fds[roles.index("pidfd")] if "pidfd" in roles else None
        cgroups = [fd for fd, r in zip(fds, roles) if r == "cgroup"]
        plan = req.get("plan")
        await_go = req.get("go") is True
        try:
            if pidfd is not None:
                # Children are born in the sandbox's pid namespace.
                self.sys.setns("setns_pid", pidfd, CLONE_NEWPID)
        except JoinError as e:
            for fd in fds:
                os.close(fd)
            self.send({"type": "spawn_failed", "id": sid, "step": e.step, "errno": e.errno,
                       "detail": e.detail})
            return
        fork_ns = time.monotonic_ns()
        try:
            pid = os.fork()
        except OSError as e:
            pid = -e.errno
        fork_took_ns = time.monotonic_ns() - fork_ns
        if pid != 0 and pidfd is not None:
            try:
                self.sys.setns("setns_pid_back", self.own_pidns, CLONE_NEWPID)
            except JoinError as e:
                # Later children would be born in the wrong sandbox: stop serving.
                self.send({"type": "error", "detail": "cannot return to the zygote's pid "
                           "namespace (errno %d); the zygote exits" % e.errno})
                os._exit(70)
        if pid < 0:
            for fd in fds:
                os.close(fd)
            self.send({"type": "spawn_failed", "id": sid, "step": "fork", "errno": -pid,
                       "detail": ""})
            return
        if pid == 0:
            # The zygote's side of this spawn, reported with the child's join steps.
            self.child(plan, channel, pidfd, cgroups,
                       [("zygote_received", self.received_ns), ("zygote_fork", fork_ns)],
                       await_go)
        for fd in fds:
            os.close(fd)
        self.children[pid] = sid
        # A pidfd opened before this loop can reap the child refers to exactly this
        # child: the runtime signals it without racing pid reuse.
        try:
            child_fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            child_fd = None
        msg = json.dumps({"type": "spawned", "id": sid, "pid": pid,
                          "pidfd": child_fd is not None, "fork_ns": fork_took_ns},
                         separators=(",", ":")).encode()
        try:
            if child_fd is None:
                self.sock.send(msg)
            else:
                socket.send_fds(self.sock, [msg], [child_fd])
        finally:
            if child_fd is not None:
                os.close(child_fd)

    def child(self, plan, channel, pidfd, cgroups, steps=None, await_go=False):
        forked_ns = time.monotonic_ns()
        steps = list(steps or ())
        try:
            signal.set_wakeup_fd(-1)
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            signal.signal(signal.SIGINT, signal.default_int_handler)
            gc.enable()
            if await_go:
                wait_go(channel)
                steps.append(("go", time.monotonic_ns()))
            channel = join(plan, channel, pidfd, cgroups, self.sys, steps)
        except JoinError as e:
            report_join_error(getattr(e, "channel", channel), e.step, e.errno, e.detail)
            os._exit(111)
        except BaseException as e:
            report_join_error(channel, "internal", 0, "%s: %s" % (type(e).__name__, e))
            os._exit(112)
        try:
            # CLOCK_MONOTONIC is the runtime's clock too: the hello carries these.
            self.kernel.serve(channel, {"forked_ns": forked_ns,
                                        "joined_ns": time.monotonic_ns(), "steps": steps})
        finally:
            os._exit(0)


def main(argv=None):
    """`python dsbox_zygote.py --control-fd N [--preload numpy,pandas]`."""
    argv = sys.argv[1:] if argv is None else list(argv)
    control = None
    modules = []
    while argv:
        flag = argv.pop(0)
        if flag == "--control-fd" and argv and argv[0].isdigit():
            control = int(argv.pop(0))
        elif flag == "--preload" and argv:
            modules = [m for m in argv.pop(0).split(",") if m]
        else:
            sys.stderr.write("usage: dsbox_zygote.py --control-fd N [--preload a,b]\n")
            return 2
    if control is None:
        sys.stderr.write("usage: dsbox_zygote.py --control-fd N [--preload a,b]\n")
        return 2
    pin_threads()
    # A session of its own: terminal signals (^C, ^\, hangup) sent to the runtime's
    # process group never reach the zygote or its kernels (the runtime interrupts them).
    try:
        os.setsid()
    except OSError:
        pass  # already a session or group leader
    gc.disable()  # no collections while preloading; children enable it again
    kernel = sys.modules.get("dsbox_kernel")
    if kernel is None:
        import dsbox_kernel as kernel
    os.environ.setdefault("MPLBACKEND", "module://" + kernel.MPL_BACKEND_MODULE)
    failed = preload(modules, kernel)
    zygote = Zygote(control, kernel)
    zygote.run(modules, failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
