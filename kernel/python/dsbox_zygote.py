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
  {"type":"ready","pid":P,"python":"3.11.2","preloaded":[...],"failed":[[name,error]],
   "threads":T}   (T: the zygote's threads after preloading, any library's; 1 is right)
  {"type":"spawned","id":N,"pid":P,"pidfd":true,"fork_ns":T} + the child's pidfd
  {"type":"spawn_failed","id":N,"step":S,"errno":E,"detail":D}
  {"type":"exited","id":N,"pid":P,"code":C|null,"signal":S|null}
  {"type":"pong","id":N,"children":K}      {"type":"error","detail":D}

A child applies the JoinPlan with join() and then serves cells (dsbox_kernel.serve) on
its channel. A step that fails is reported on the channel as
{"type":"join_error","step":S,"errno":E,"detail":D}, never as a traceback.
"""

import _signal  # signal's C functions: `signal`'s wrappers convert results to enums
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
JEMALLOC_CONF_VAR = "JE_ARROW_MALLOC_CONF"
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
    # pyarrow (which pandas imports when installed) bundles jemalloc, which starts a
    # background purging thread: the zygote would fork as a threaded process. The option
    # is read when jemalloc initialises, i.e. during the preload below.
    conf = os.environ.get(JEMALLOC_CONF_VAR, "")
    if "background_thread" not in conf:
        os.environ[JEMALLOC_CONF_VAR] = (conf + "," if conf else "") + "background_thread:false"


def thread_count():
    """Threads of this process (any library's, not only Python's); None if unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return None


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
    # A kernel replaces sys.stdin/stdout/stderr (and their __x__ twins). Were these the
    # last references, each child would free the interpreter's three text files there
    # (buffers, raw files, codecs): ~25 copy-on-write faults for nothing.
    _ZYGOTE_STDIO.extend((sys.stdin, sys.stdout, sys.stderr,
                          sys.__stdin__, sys.__stdout__, sys.__stderr__))
    gc.collect()
    gc.freeze()  # preloaded objects stay out of GC passes: no copy-on-write from the GC
    return failed


_ZYGOTE_STDIO = []


# ------------------------------------------------------------------------- join

class NumpyReseeder:
    """`reseed_numpy` without Python objects: a child fills the key of the MT19937 state
    struct (found through numpy's documented `BitGenerator.ctypes.state_address`) with
    getrandom(2) in place and sets its position to 624, so the next draw regenerates.
    Building bytes, an array and a state dict instead costs each child ~50 copy-on-write
    faults. The layout (uint32 key[624]; int pos) is checked here, in the zygote, through
    numpy's own state setter; where it does not hold, `reseed_numpy` is used."""

    KEY_WORDS = 624

    def __init__(self, nprandom, libc):
        import numpy
        bit_generator = nprandom.mtrand._rand._bit_generator
        address = bit_generator.ctypes.state_address
        size = self.KEY_WORDS * 4
        saved = bit_generator.state
        probe = numpy.arange(12345, 12345 + self.KEY_WORDS, dtype=numpy.uint32)
        bit_generator.state = {"bit_generator": "MT19937", "state": {"key": probe, "pos": 17}}
        pos = ctypes.c_int.from_address(address + size)
        laid_out_as_read = ctypes.string_at(address, size) == probe.tobytes() and pos.value == 17
        bit_generator.state = saved
        if not laid_out_as_read:
            raise ValueError("numpy's MT19937 state is not laid out as expected")
        self.getrandom = libc.getrandom
        self.getrandom.restype = ctypes.c_ssize_t
        self.getrandom.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint)
        self.address = address
        self.size = size
        self.pos = pos

    def __call__(self, nprandom):
        if self.getrandom(self.address, self.size, 0) != self.size:
            reseed_numpy(nprandom)  # interrupted, or no getrandom(2): the plain way
            return
        self.pos.value = self.KEY_WORDS


def numpy_reseeder(libc):
    """A NumpyReseeder for the preloaded numpy, or `reseed_numpy` where one cannot be made."""
    nprandom = sys.modules.get("numpy.random")
    if nprandom is None:
        return reseed_numpy
    try:
        return NumpyReseeder(nprandom, libc)
    except (AttributeError, TypeError, ValueError, ImportError):
        return reseed_numpy


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


def _last_capability():
    """The highest capability number this kernel knows (None: probe with EINVAL)."""
    try:
        with open("/proc/sys/kernel/cap_last_cap") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


class PreparedPlan:
    """A JoinPlan checked and turned into the values and buffers its join needs.

    Built once per distinct plan in the zygote (see `Zygote.prepared`), before the fork:
    every child of that plan then only reads these objects. Work a child does writes to
    pages it shares with the zygote, each first write a copy-on-write fault; building
    them here once costs each child nothing. A plan that fails a check keeps its error,
    which the child raises at the step that would have failed (as `join` did before).
    """

    __slots__ = ("error", "namespaces", "cwd", "env", "rlimits", "landlock", "caps",
                 "uid", "gid", "no_new_privs", "seccomp")

    def __init__(self, plan):
        self.error = None
        self.landlock = self.seccomp = self.caps = None
        try:
            _check_plan(plan)
        except JoinError as e:
            self.error = e
            return
        self.namespaces = plan["namespaces"]
        self.cwd = plan["cwd"]
        self.uid = plan["uid"]
        self.gid = plan["gid"]
        self.no_new_privs = plan["no_new_privs"]
        self.env = [(key, value) for key, value in plan["env"]]
        import resource
        self.rlimits = [(res, tuple(resource.RLIM_INFINITY if v >= (1 << 63) else v
                                    for v in (soft, hard)))
                        for res, soft, hard in plan["rlimits"]]
        if plan["drop_capabilities"]:
            last = _last_capability()
            self.caps = (range(last + 1) if last is not None else range(64),
                         ctypes.create_string_buffer(
                             struct.pack("=Ii", LINUX_CAPABILITY_VERSION_3, 0)),
                         ctypes.create_string_buffer(24))
        if plan.get("landlock") is not None:
            self.landlock = _prepare_landlock(plan["landlock"])
        if plan.get("seccomp_bpf"):
            self.seccomp = _prepare_seccomp(plan["seccomp_bpf"])


def _prepare_landlock(ll):
    """(ruleset attr buffer, its size, [(path, rule buffer)], error for a bad rule or
    None)."""
    abi = ll["abi"]
    size = 8 if abi < 4 else (16 if abi < 6 else 24)
    attr = struct.pack("=QQQ", ll["handled_access_fs"], ll["handled_access_net"],
                       ll["scoped"])[:size]
    rules = []
    for rule in ll["rules"]:
        path = rule.get("path") if isinstance(rule, dict) else None
        access = rule.get("access") if isinstance(rule, dict) else None
        if not isinstance(path, str) or not isinstance(access, int) or access < 0:
            error = JoinError("landlock_add_rule", errno.EINVAL, "bad rule %r" % (rule,))
            return (ctypes.create_string_buffer(attr, size), size, rules, error)
        # struct landlock_path_beneath_attr is packed: u64 allowed_access, s32 parent_fd;
        # the child writes its fd into the prepared buffer.
        rules.append((path, ctypes.create_string_buffer(struct.pack("=Qi", access, -1), 12)))
    return (ctypes.create_string_buffer(attr, size), size, rules, None)


def _prepare_seccomp(bpf_b64):
    """(filter buffer, sock_fprog) ready for prctl, or the JoinError of a bad program."""
    import base64
    try:
        bpf = base64.b64decode(bpf_b64, validate=True)
    except ValueError:
        return JoinError("seccomp", errno.EINVAL, "seccomp_bpf is not base64")
    count = len(bpf) // 8
    if len(bpf) % 8 or not 0 < count <= BPF_MAXINSNS:
        return JoinError("seccomp", errno.EINVAL, "%d bytes is not a BPF program" % len(bpf))
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    return (buf, _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p)))


def join(plan, channel, pidfd=None, cgroup_fds=(), sys_=None, steps=None, env_done=False):
    """Apply a JoinPlan (a dict, or a PreparedPlan of one) in this (freshly forked,
    single-threaded) process.

    Returns the channel's new fd (3). Raises JoinError naming the failed step; its
    `channel` attribute is the channel's fd at that point (it moves to 3 on the way).
    `steps`: a list that receives (step, CLOCK_MONOTONIC ns) as each step ends.
    `env_done`: the environment is the plan's already (the zygote set it before forking).
    """
    where = {"channel": channel, "steps": steps}
    try:
        prepared = plan if isinstance(plan, PreparedPlan) else PreparedPlan(plan)
        return _join(prepared, where, pidfd, cgroup_fds, sys_ or Sys(), env_done)
    except JoinError as e:
        e.channel = where["channel"]
        raise
    except BaseException as e:
        err = JoinError("internal", 0, "%s: %s" % (type(e).__name__, e))
        err.channel = where["channel"]
        raise err


def set_environment(pairs):
    """Make os.environ (and the C environment) exactly `pairs`."""
    # Key by key: 0.1 ms faster than clear(), whose popitem() iterates anew each time.
    environ = os.environ
    for key in list(environ):
        del environ[key]
    for key, value in pairs:
        environ[key] = value


def _join(plan, where, pidfd, cgroup_fds, s, env_done=False):
    channel = where["channel"]
    steps = where["steps"]
    mark = steps.append if steps is not None else None
    now = time.monotonic_ns
    if plan.error is not None:
        raise plan.error

    # 1. cgroup: before anything else, so every later allocation is charged to it.
    for fd in cgroup_fds:
        try:
            os.write(fd, b"0")
        except OSError as e:
            raise JoinError("cgroup", e.errno)

    if mark:
        mark(("cgroup", now()))
    # 2. The sandbox's namespaces (pid was entered by the zygote before fork).
    if plan.namespaces:
        if pidfd is None:
            raise JoinError("setns", errno.EBADF, "namespaces to join but no pidfd")
        s.setns("setns", pidfd, plan.namespaces)

    if mark:
        mark(("setns", now()))
    # 3. Working directory (setns into a mount namespace moved us to its root).
    try:
        os.chdir(plan.cwd)
    except OSError as e:
        raise JoinError("chdir", e.errno, plan.cwd)

    if mark:
        mark(("chdir", now()))
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

    if mark:
        mark(("close_fds", now()))
    # 5. Environment: exactly the plan's (the zygote may have set it before the fork).
    if not env_done:
        try:
            set_environment(plan.env)
        except OSError as e:
            raise JoinError("env", e.errno)

    if mark:
        mark(("env", now()))
    # 6. rlimits.
    if plan.rlimits:
        import resource
        for res, lim in plan.rlimits:
            try:
                resource.setrlimit(res, lim)
            except (OSError, ValueError) as e:
                raise JoinError("rlimits", getattr(e, "errno", None) or errno.EINVAL,
                                "resource %d" % res)

    if mark:
        mark(("rlimits", now()))
    # 7. Fresh random state: every child of the zygote would otherwise draw the same
    # numbers. `random` reseeded itself already: its own at-fork handler does that.
    try:
        nprandom = sys.modules.get("numpy.random")
        if nprandom is not None:
            getattr(s, "reseed_numpy", reseed_numpy)(nprandom)
    except OSError as e:
        raise JoinError("reseed", e.errno)

    if mark:
        mark(("reseed", now()))
    # 8. landlock.
    if plan.landlock is not None:
        _landlock(s, plan.landlock)

    if mark:
        mark(("landlock", now()))
    # 9. Capabilities: bounding set and ambient set first (they need CAP_SETPCAP).
    if plan.caps is not None:
        caps, header, data = plan.caps
        for cap in caps:
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

    if mark:
        mark(("capbset", now()))
    # 10. Identity.
    try:
        os.setgroups([])
    except OSError as e:
        raise JoinError("setgroups", e.errno)
    try:
        os.setresgid(plan.gid, plan.gid, plan.gid)
    except OSError as e:
        raise JoinError("setresgid", e.errno)
    try:
        os.setresuid(plan.uid, plan.uid, plan.uid)
    except OSError as e:
        raise JoinError("setresuid", e.errno)

    if mark:
        mark(("ids", now()))
    # 11. Nothing left in the effective, permitted or inheritable sets.
    if plan.caps is not None:
        s.syscall("capset", "capset", header, data)

    if mark:
        mark(("capset", now()))
    # 12. no_new_privs.
    if plan.no_new_privs:
        s.prctl("no_new_privs", PR_SET_NO_NEW_PRIVS, 1)

    if mark:
        mark(("no_new_privs", now()))
    # 13. seccomp, last: every step above needed syscalls the filter may block.
    if plan.seccomp is not None:
        if isinstance(plan.seccomp, JoinError):
            raise plan.seccomp
        s.prctl("seccomp", PR_SET_SECCOMP, SECCOMP_MODE_FILTER,
                ctypes.addressof(plan.seccomp[1]))
    if mark:
        mark(("seccomp", now()))
    return channel


def _landlock(s, prepared):
    attr_buf, size, rules, rule_error = prepared
    ruleset = s.syscall("landlock_create_ruleset", "landlock_create_ruleset", attr_buf,
                        ctypes.c_size_t(size), ctypes.c_uint32(0))
    try:
        if rule_error is not None:
            raise rule_error
        for path, buf in rules:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError as e:
                raise JoinError("landlock_open", e.errno, path)
            try:
                struct.pack_into("=i", buf, 8, fd)
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


MAX_PREPARED_PLANS = 16


def _skip_after_fork():
    pass


def _logging_after_fork():
    _lock._at_fork_reinit()  # noqa: F821 -- runs with logging's globals (see below)


def lean_after_fork():
    """Make Python's at-fork work in this zygote's children cheap; returns what to undo.

    `os.fork()` runs the callbacks modules registered with `os.register_at_fork` in the
    child. Two of them, `threading`'s and `logging`'s, cost a child ~200 copy-on-write
    faults (a third of its faults before its first cell) to repair what other threads
    may have left behind: locks they held, threads that do not exist in the child. The
    zygote has no other thread and holds none of those locks when it forks (checked
    here), so in its children that work is moot: `threading`'s is skipped and
    `logging`'s keeps only the reset of its module lock, which the zygote does hold
    across the fork (its `before` callback takes it). `random`'s callback (the reseed
    every child needs) and the C-level ones are untouched.

    The callbacks are the registered function objects, so their code is swapped in
    place; each child puts the original code back first thing, so forks made by user
    code in a kernel get Python's full treatment. Python >= 3.13 reworked threading's
    fork handling: there nothing is swapped.
    """
    swaps = []
    threading = sys.modules.get("threading")
    logging = sys.modules.get("logging")
    if sys.version_info >= (3, 13) or threading is None:
        return swaps
    if (threading.active_count() != 1 or getattr(threading, "_limbo", None)
            or (thread_count() or 1) > 1):
        return swaps  # a preloaded module started a thread: keep Python's repairs
    candidates = [(getattr(threading, "_after_fork", None), _skip_after_fork)]
    if logging is not None and hasattr(getattr(logging, "_lock", None), "_at_fork_reinit"):
        candidates.append((getattr(logging, "_after_at_fork_child_reinit_locks", None),
                           _logging_after_fork))
    for function, lean in candidates:
        code = getattr(function, "__code__", None)
        if code is None or code.co_argcount or code.co_freevars or code.co_kwonlyargcount:
            continue
        swaps.append((function, code))
        function.__code__ = lean.__code__
    return swaps


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
        self.sys.reseed_numpy = numpy_reseeder(self.sys.libc)
        self.received_ns = 0
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        # [(plan, PreparedPlan)], the latest first: a template's children share one.
        self.prepared = []
        self.lean_swaps = lean_after_fork()
        self.env = None  # the env list of the plan the zygote's environment is

    def prepare(self, plan):
        # Found by equality, not by a key: comparing the parsed plans allocates nothing
        # (every page the zygote writes between forks is a copy-on-write fault).
        for i, (known, prepared) in enumerate(self.prepared):
            if known == plan:
                if i:
                    self.prepared.insert(0, self.prepared.pop(i))
                return prepared
        prepared = PreparedPlan(plan)
        self.prepared.insert(0, (plan, prepared))
        del self.prepared[MAX_PREPARED_PLANS:]
        return prepared

    def zygote_env_for(self, plan):
        """Give the zygote the plan's environment, so that its children need not change
        theirs (that cost each ~70 copy-on-write faults); True when it has it. The zygote
        no longer needs its own: the variables it preloaded with (thread pins, jemalloc's
        options) were read when those libraries initialised."""
        if plan.error is not None:
            return False
        if self.env is None or (self.env is not plan.env and self.env != plan.env):
            try:
                set_environment(plan.env)
            except OSError:
                self.env = None
                return False  # the child tries again and reports the step
        self.env = plan.env
        return True

    def send(self, obj):
        self.sock.send(json.dumps(obj, separators=(",", ":")).encode("utf-8"))

    def run(self, preloaded, failed):
        # SIGCHLD wakes the loop through the wakeup fd; the handler itself does nothing.
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.send({"type": "ready", "pid": os.getpid(), "python": sys.version.split()[0],
                   "preloaded": list(preloaded), "failed": failed,
                   "threads": thread_count()})
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
        plan = self.prepare(req.get("plan"))
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
        env_done = self.zygote_env_for(plan)
        # Everything allocated since the last fork joins the frozen objects, and the
        # collector's allocation count restarts at 0. Otherwise the child's first
        # allocation after it enables the collector starts a collection that walks (and
        # writes the headers of) every object the zygote made since preloading: ~140
        # copy-on-write faults per child. The zygote never collects (its collector is off).
        gc.freeze()
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
                       await_go, env_done)
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

    def child(self, plan, channel, pidfd, cgroups, steps=None, await_go=False,
              env_done=False):
        forked_ns = time.monotonic_ns()
        # The kernel's own forks (multiprocessing, subprocess) get Python's full at-fork work.
        for function, code in self.lean_swaps:
            function.__code__ = code
        steps = list(steps or ())
        try:
            _signal.set_wakeup_fd(-1)
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            _signal.signal(_signal.SIGINT, _signal.default_int_handler)
            gc.enable()
            if await_go:
                wait_go(channel)
                steps.append(("go", time.monotonic_ns()))
            channel = join(plan, channel, pidfd, cgroups, self.sys, steps, env_done)
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


def preloaded_interpreter(modules):
    """Make this interpreter what the zygote forks from: BLAS/OpenMP threads pinned, the
    kernel's modules and `modules` imported, the GC frozen and off. Returns the kernel
    module and [[name, error], ...] of the imports that failed. `dsbox bench kernel`'s
    bare-fork floor starts its interpreter with this too."""
    pin_threads()
    gc.disable()  # no collections while preloading; children enable it again
    kernel = sys.modules.get("dsbox_kernel")
    if kernel is None:
        import dsbox_kernel as kernel
    os.environ.setdefault("MPLBACKEND", "module://" + kernel.MPL_BACKEND_MODULE)
    return kernel, preload(modules, kernel)


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
    # A session of its own: terminal signals (^C, ^\, hangup) sent to the runtime's
    # process group never reach the zygote or its kernels (the runtime interrupts them).
    try:
        os.setsid()
    except OSError:
        pass  # already a session or group leader
    kernel, failed = preloaded_interpreter(modules)
    zygote = Zygote(control, kernel)
    zygote.run(modules, failed)
    return 0


if __name__ == "__main__":
    sys.exit(main())
