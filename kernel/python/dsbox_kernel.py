"""dsbox kernel: a persistent Python kernel that serves cells over its own socket.

The runtime talks to this program over one socket (its "channel", an inherited fd),
never over stdin/stdout, so user prints cannot corrupt the protocol. Frames are a u32
big-endian length followed by a UTF-8 JSON body (at most MAX_FRAME bytes).

Runtime -> kernel:  {"type":"execute","id":N,"code":"..."}  |  {"type":"warmup","id":N}
                    |  {"type":"shutdown"}
Kernel -> runtime:  {"type":"hello","protocol":1,"pid":P,"python":"3.11.2"[,"timing":{...}]}
                    once, then
                    per cell any number of stream/result/display_data/error items and a
                    final {"type":"done","id":N,"status":"ok"|"error"|"interrupted",...}.

Two entry points: ``serve(channel_fd)`` (used in a child forked from the zygote, which has
already imported everything this module needs: see PRELOAD) and ``main()`` for the
standalone mode ``python dsbox_kernel.py --channel-fd N`` used by tests.

Design notes (why things are the way they are):
* fds 1 and 2 are pipes drained by one reader thread, plus a synchronous drain before
  every Python-level write and at cell end, so print(), os.write(1, ...), C extensions
  and subprocesses keep their order.
* SIGINT raises KeyboardInterrupt only while user code runs and never inside the
  kernel's own critical sections (a frame half-sent would corrupt the channel).
* User code may delete or replace builtins and module functions: the kernel keeps
  private references to everything it uses (see the copy of __builtins__ below).
"""

import builtins as _builtins_module

# Functions defined in this module resolve builtins through this private copy, so a
# cell that does `del builtins.len` or `builtins.print = None` cannot break the kernel.
__builtins__ = dict(_builtins_module.__dict__)

import _signal  # signal's C functions: `signal`'s wrappers convert results to enums
import _thread
import ast
import base64
import io
import json
import linecache
import os
import re
import select
import socket
import sys
import threading
import time
import traceback
from keyword import iskeyword as _iskeyword

PROTOCOL = 1
# The Rust side rejects frames above its own limit (16 MiB); the kernel stays well below.
MAX_FRAME = 16 << 20
# Stream text is coalesced and sent in chunks of at most this many characters.
STREAM_CHUNK = 256 << 10
# Pending stream text is flushed at least this often while a cell runs (liveness).
FLUSH_INTERVAL = 0.05
# A single MIME value (text/plain, text/html, ...) is cut to this many characters.
MAX_MIME_CHARS = 1 << 20
# A figure whose PNG is larger than this is replaced by a note.
MAX_PNG_BYTES = 8 << 20
# Output that arrives on fds 1/2 between cells is kept (up to this much) for the next cell.
MAX_IDLE_HOLD = 64 << 10
# Tracebacks are cut to this many characters (head and tail kept).
MAX_TRACEBACK_CHARS = 64 << 10
# Cells whose source is kept in linecache for tracebacks.
LINECACHE_CELLS = 500
# Name of the matplotlib backend module this kernel provides (see _MplFinder).
MPL_BACKEND_MODULE = "dsbox_kernel_mpl"

# Modules the kernel uses after start; the zygote imports them before forking so that a
# child's serve() imports nothing on its hot path.
PRELOAD = (
    "ast", "base64", "ctypes", "io", "json", "linecache", "os", "pprint", "re", "select",
    "signal", "socket", "struct", "subprocess", "threading", "time", "traceback",
    "warnings", "importlib.machinery",
)

# Private references (user code may monkeypatch the modules).
_os_read = os.read
_os_write = os.write
_os_getpid = os.getpid
_perf = time.perf_counter
_monotonic = time.monotonic
_get_ident = threading.get_ident


def _json_default(obj):
    raise TypeError("not JSON serializable: %s" % type(obj).__name__)


# The C encoder and scanner are called directly: json.dumps/json.loads are Python code
# that looks up builtins (len, isinstance) a cell may have deleted.
try:
    from json.encoder import c_make_encoder as _c_make_encoder
    _c_encoder = _c_make_encoder(None, _json_default, json.encoder.encode_basestring,
                                 None, ":", ",", False, False, False)

    def _encode_json(obj):
        return "".join(_c_encoder(obj, 0))
except (ImportError, TypeError):  # no _json accelerator
    _encode_json = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"),
                                    check_circular=False, allow_nan=False).encode
_scan_json = json.JSONDecoder().scan_once


def _loads(body):
    return _scan_json(body.decode("utf-8"), 0)[0]

_b64encode = base64.b64encode
_exec = exec
_eval = eval
_compile = compile
_TOP_LEVEL_AWAIT = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE: a cell compiled with top-level await
_ASYNCIO_DIR = os.path.join(os.path.dirname(os.__file__), "asyncio", "")
_AWAIT_VALUE = "_dsbox_await_value_"  # where an awaiting cell leaves its last value
_repr = repr
_KFILE = (lambda: 0).__code__.co_filename


def _load_fflush():
    try:
        import ctypes
        fflush = ctypes.CDLL(None).fflush
        fflush.argtypes = [ctypes.c_void_p]
        return fflush
    except Exception:  # no ctypes/libc: C-level stdio buffers are flushed at exit only
        return None


# Done at import, i.e. once in the zygote before it forks: in a child these would write
# to hundreds of shared pages (a regex compile, dlopen bookkeeping).
_FFLUSH = _load_fflush()
import warnings  # noqa: E402

# A cell that forces matplotlib's Agg backend and calls plt.show() would warn; the kernel
# sends its figures anyway at the end of the cell.
warnings.filterwarnings("ignore", message=".*non-interactive, and thus cannot be shown")


class _UsageError(Exception):
    """A magic was misused or is unknown (reported as an error item named UsageError)."""


def _frame(obj):
    """Encode one message as a length-prefixed frame."""
    text = _encode_json(obj)
    try:
        body = text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates from user strings
        body = text.encode("utf-8", "replace")
    return len(body).to_bytes(4, "big") + body


def _cut_text(text, limit):
    """Keep head and tail of an over-long string with a line saying how much was cut."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    cut = len(text) - head - tail
    return "%s\n[... %d characters cut by the dsbox kernel ...]\n%s" % (
        text[:head], cut, text[-tail:])


class _Writer(io.TextIOBase):
    """sys.stdout / sys.stderr: line-oriented text writers into the kernel's channel."""

    def __init__(self, kernel, name, fd):
        self._k = kernel
        self._name = name
        self._fd = fd

    # Attributes that libraries probe on sys.stdout.
    encoding = "utf-8"
    errors = "replace"
    line_buffering = True
    newlines = None

    @property
    def name(self):
        return "<%s>" % self._name

    @property
    def mode(self):
        return "w"

    @property
    def buffer(self):
        return _BinaryWriter(self)

    @property
    def closed(self):
        # Never closed: a cell that closes sys.stdout must not break later cells.
        return False

    def close(self):
        self.flush()

    def fileno(self):
        # The real fd is the pipe the kernel drains, so subprocess(stdout=sys.stdout)
        # and faulthandler output are captured too.
        return self._fd

    def isatty(self):
        return False

    def readable(self):
        return False

    def seekable(self):
        return False

    def writable(self):
        return True

    def write(self, s):
        if not isinstance(s, str):
            raise TypeError("write() argument must be str, not %s" % type(s).__name__)
        if s:
            self._k._write(self._name, self._fd, s)
        return len(s)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        self._k._flush_from_user()


class _BinaryWriter:
    """sys.stdout.buffer: bytes are decoded (UTF-8, replacing errors) and written."""

    def __init__(self, writer):
        self._w = writer

    def write(self, b):
        self._w.write(bytes(b).decode("utf-8", "replace"))
        return len(b)

    def flush(self):
        self._w.flush()

    def fileno(self):
        return self._w.fileno()

    def isatty(self):
        return False

    writable = lambda self: True  # noqa: E731


class _NoStdin(io.TextIOBase):
    """sys.stdin: reading is not supported (the kernel has no terminal)."""

    def readable(self):
        return True

    def read(self, size=-1):
        raise EOFError("input is not supported in a dsbox kernel: the kernel has no stdin")

    readline = read

    def fileno(self):
        return 0


class _MplFinder:
    """Import hook providing the matplotlib backend `module://dsbox_kernel_mpl`.

    The backend is Agg, and its show() sends every open figure as image/png. It is an
    import hook (not a file) because the kernel is a single embedded program.
    """

    def __init__(self, kernel):
        self._k = kernel

    def find_spec(self, name, path=None, target=None):
        if name != MPL_BACKEND_MODULE:
            return None
        import importlib.machinery
        return importlib.machinery.ModuleSpec(name, self)

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        from matplotlib.backend_bases import FigureManagerBase
        from matplotlib.backends.backend_agg import FigureCanvasAgg

        kernel = self._k

        def show(*args, block=None, **kwargs):
            kernel._flush_figures(render=True)

        def draw_if_interactive(*args, **kwargs):
            pass

        module.FigureCanvas = FigureCanvasAgg
        module.FigureManager = FigureManagerBase
        module.show = show
        module.draw_if_interactive = draw_if_interactive


class _DisplayHandle:
    """What display(..., display_id=...) returns, with IPython's methods."""

    def __init__(self, kernel, display_id):
        self._k = kernel
        self.display_id = display_id if isinstance(display_id, str) else "%032x" % id(self)

    def display(self, obj, **kwargs):
        self._k.display(obj, **kwargs)

    update = display

    def __repr__(self):
        return "<DisplayHandle display_id=%s>" % self.display_id


# The `IPython.display` API for code written for Jupyter, when the rootfs has no IPython.
# Kept as source: executed into modules named as IPython's, so that reprs (text/plain
# `<IPython.core.display.HTML object>`) and pickling names match what a notebook shows.
_IPYTHON_DISPLAY_SRC = r"""
import json as _json
import os as _os


def display(*objs, **kwargs):
    return _kernel.display(*objs, **kwargs)


def publish_display_data(data, metadata=None, **kwargs):
    _kernel.publish(data)


def update_display(obj, *, display_id, **kwargs):
    _kernel.display(obj, **kwargs)


def clear_output(wait=False):
    # The items of a cell are a list sent as they come: there is nothing to clear.
    pass


class DisplayObject:
    _read_flags = "r"

    def __init__(self, data=None, url=None, filename=None, metadata=None):
        if isinstance(data, str) and url is None and filename is None:
            if data.startswith(("http://", "https://")):
                url, data = data, None
            elif len(data) < 4096 and "\n" not in data and _os.path.isfile(data):
                filename, data = data, None
        self.data, self.url, self.filename = data, url, filename
        self.metadata = {} if metadata is None else metadata
        if filename is not None:
            with open(filename, self._read_flags) as f:
                self.data = f.read()
        elif url is not None and data is None:
            # Sandboxes have no network: the object shows as text only.
            self.data = None

    def __repr__(self):
        cls = type(self)
        return "<%s.%s object>" % (cls.__module__, cls.__name__)

    def reload(self):
        if self.filename is not None:
            with open(self.filename, self._read_flags) as f:
                self.data = f.read()


class TextDisplayObject(DisplayObject):
    def __init__(self, data=None, url=None, filename=None, metadata=None):
        if isinstance(data, (list, tuple)):
            data = "".join(data)
        super().__init__(data, url, filename, metadata)


class Pretty(TextDisplayObject):
    def _repr_pretty_(self, pp, cycle):
        return pp.text(self.data)

    def __repr__(self):
        return str(self.data)


class HTML(TextDisplayObject):
    def _repr_html_(self):
        return self.data

    def __html__(self):
        return self.data


class Markdown(TextDisplayObject):
    def _repr_markdown_(self):
        return self.data


class Latex(TextDisplayObject):
    def _repr_latex_(self):
        return self.data


class Math(TextDisplayObject):
    def _repr_latex_(self):
        return "$\\displaystyle %s$" % (self.data or "").strip("$")


class SVG(DisplayObject):
    def _repr_svg_(self):
        return self.data


class JSON(DisplayObject):
    def __init__(self, data=None, url=None, filename=None, expanded=False, metadata=None,
                 root="root", **kwargs):
        if (isinstance(data, str) and url is None and filename is None
                and not data.startswith(("http://", "https://"))
                and not _os.path.isfile(data)):
            data = _json.loads(data)
        super().__init__(data, url, filename, metadata)
        if isinstance(self.data, str) and filename is not None:
            self.data = _json.loads(self.data)

    def _repr_json_(self):
        return self.data


class Javascript(TextDisplayObject):
    def _repr_mimebundle_(self, include=None, exclude=None):
        return {"application/javascript": self.data or "", "text/plain": repr(self)}


class Image(DisplayObject):
    _read_flags = "rb"

    def __init__(self, data=None, url=None, filename=None, format=None, embed=None,
                 width=None, height=None, metadata=None, **kwargs):
        super().__init__(data, url, filename, metadata)
        name = (self.filename or self.url or "").lower()
        if format is None:
            if name.endswith((".jpg", ".jpeg")) or (isinstance(self.data, bytes)
                                                    and self.data[:3] == b"\xff\xd8\xff"):
                format = "jpeg"
            else:
                format = "png"
        self.format = "jpeg" if format.lower() in ("jpg", "jpeg") else format.lower()
        self.width, self.height = width, height

    def _repr_png_(self):
        return self.data if self.format == "png" and isinstance(self.data, bytes) else None

    def _repr_jpeg_(self):
        return self.data if self.format == "jpeg" and isinstance(self.data, bytes) else None


class IFrame:
    def __init__(self, src, width, height, extras=None, **kwargs):
        self.src, self.width, self.height = src, width, height

    def _repr_html_(self):
        return ('<iframe width="%s" height="%s" src="%s" frameborder="0" allowfullscreen>'
                '</iframe>' % (self.width, self.height, self.src))


def _display_as(mime):
    def show(*objs, raw=False, metadata=None):
        for obj in objs:
            if raw:
                _kernel.publish({mime: obj})
            else:
                _kernel.display(obj, include=[mime, "text/plain"])
    return show


display_pretty = _display_as("text/plain")
display_html = _display_as("text/html")
display_markdown = _display_as("text/markdown")
display_latex = _display_as("text/latex")
display_svg = _display_as("image/svg+xml")
display_png = _display_as("image/png")
display_jpeg = _display_as("image/jpeg")
display_json = _display_as("application/json")
display_javascript = _display_as("application/javascript")
"""

# Names of the shim: module -> whether it is a package.
_IPYTHON_SHIM = {"IPython": True, "IPython.core": True, "IPython.display": False,
                 "IPython.core.display": False, "IPython.core.display_functions": False,
                 "IPython.core.getipython": False}


class _IPythonFinder:
    """`from IPython.display import display, HTML, Markdown` for code written for Jupyter.

    Without IPython in the rootfs, a small stand-in provides get_ipython() (None, as
    outside IPython) and the display API, shown as display_data items. With IPython
    installed, its own modules load, and only `display`, `publish_display_data` and
    `clear_output` are replaced: outside an IPython shell they print or start one.
    """

    def __init__(self, kernel):
        self._k = kernel
        self._real = None  # found on first use: is IPython installed?

    def find_spec(self, name, path=None, target=None):
        if name not in _IPYTHON_SHIM:
            return None
        import importlib.machinery
        if self._real is None:
            self._real = importlib.machinery.PathFinder.find_spec("IPython") is not None
        if self._real:
            if name != "IPython.core.display_functions":
                return None
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _PatchingLoader(spec.loader, self._k)
            return spec
        return importlib.machinery.ModuleSpec(name, self, is_package=_IPYTHON_SHIM[name])

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        import importlib
        name = module.__name__
        if _IPYTHON_SHIM[name]:
            module.__path__ = []
        if name in ("IPython", "IPython.core.getipython"):
            module.get_ipython = lambda: None
        if name == "IPython.core.display":
            module.__dict__["_kernel"] = self._k
            exec(_IPYTHON_DISPLAY_SRC, module.__dict__)
        elif name in ("IPython.display", "IPython.core.display_functions"):
            # One set of classes, named as IPython names them (IPython.core.display.HTML).
            source = importlib.import_module("IPython.core.display")
            module.__dict__.update({k: v for k, v in source.__dict__.items()
                                    if not k.startswith("_")})
        elif name == "IPython":
            importlib.import_module("IPython.display")  # `import IPython; IPython.display`


class _PatchingLoader:
    """IPython's display_functions, with the kernel's display in place of its own."""

    def __init__(self, loader, kernel):
        self._loader = loader
        self._k = kernel

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        module.display = self._k.display
        module.publish_display_data = lambda data, *args, **kwargs: self._k.publish(data)
        module.clear_output = lambda wait=False: None


class Kernel:
    """One kernel process: the channel, the output capture and the user namespace."""

    def __init__(self, channel_fd):
        os.set_inheritable(channel_fd, False)  # never leak the channel into subprocesses
        self.sock = socket.socket(fileno=channel_fd)
        self.rbuf = bytearray()
        self.lock = threading.Lock()
        self.main_ident = _get_ident()
        self.count = 0
        # Signal state (main thread only): in_cell = user code may be interrupted;
        # crit > 0 = inside the kernel's own critical section, interrupt deferred.
        self.in_cell = False
        self.crit = 0
        self.deferred = False
        # Output state (guarded by self.lock).
        self.active = False
        self.cur_id = 0
        self.pend_name = None
        self.pend = []
        self.pend_len = 0
        self.frames = []
        self.flush_due = None
        self.reader_waiting = False
        self.idle_hold = []
        self.idle_len = 0
        self.idle_cut = 0
        self.forked = False
        self.fork_buf = {}
        self.cells = []
        self.ns = None
        self.loop = None  # asyncio's, made by the first cell with top-level await
        self._fflush = None
        self.timing = None

    # ----------------------------------------------------------------- setup

    def setup(self):
        import codecs

        self._stdio_to_devnull()
        # fds 1 and 2 become pipes that this kernel drains.
        self.pipes = []
        decoder = codecs.getincrementaldecoder("utf-8")
        for fd, name in ((1, "stdout"), (2, "stderr")):
            r, w = os.pipe()  # both ends CLOEXEC
            os.dup2(w, fd)  # fd 1/2 stay inheritable: subprocesses write into the pipe
            os.close(w)
            os.set_blocking(r, False)
            self.pipes.append((r, name, decoder("replace")))
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._fflush = _FFLUSH

        self.out_w = _Writer(self, "stdout", 1)
        self.err_w = _Writer(self, "stderr", 2)
        sys.stdout = sys.__stdout__ = self.out_w
        sys.stderr = sys.__stderr__ = self.err_w
        sys.stdin = sys.__stdin__ = _NoStdin()

        # The user namespace is a real __main__ module so pickling of user classes works.
        import types
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = _builtins_module
        main.__dict__["display"] = self.display
        sys.modules["__main__"] = main
        self.ns = main.__dict__

        os.environ.setdefault("MPLBACKEND", "module://" + MPL_BACKEND_MODULE)
        sys.meta_path.append(_MplFinder(self))
        sys.meta_path.insert(0, _IPythonFinder(self))

        _signal.signal(_signal.SIGINT, self._on_sigint)
        os.register_at_fork(after_in_child=self._after_fork_in_child)

        self._mark("setup")
        # A raw thread: threading.Thread.start() would wait until the new thread runs,
        # which on a busy machine delays the hello by milliseconds. The reader needs no
        # handshake (it only waits on the pipes and the wakeup fd).
        old = _thread.stack_size(256 << 10)
        try:
            _thread.start_new_thread(self._reader, ())
        finally:
            _thread.stack_size(old)
        self._mark("reader_thread")

    def _mark(self, step):
        """Record when a start step ended (reported in the hello of a zygote child)."""
        if self.timing is not None:
            self.timing.setdefault("steps", []).append((step, time.monotonic_ns()))

    @staticmethod
    def _stdio_to_devnull():
        """fds 0-2 must exist before pipes are created (else os.pipe() would return them)."""
        for fd in (0, 1, 2):
            try:
                os.fstat(fd)
            except OSError:
                try:
                    null = os.open(os.devnull, os.O_RDWR)
                except OSError:
                    return
                if null != fd:
                    os.dup2(null, fd)
                    os.close(null)
        try:
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)
            os.close(null)
        except OSError:
            pass

    def _after_fork_in_child(self):
        # A child forked by user code (multiprocessing) shares the channel with us; it
        # must never write frames. Its prints go to fds 1/2, which we capture.
        self.forked = True
        self.fork_buf = {}
        self.lock = threading.Lock()
        try:
            self.sock.detach()
        except Exception:
            pass

    # ------------------------------------------------------------- signals

    def _on_sigint(self, signum, frame):
        if self.in_cell:
            if self.crit == 0:
                raise KeyboardInterrupt
            self.deferred = True
        # Idle or inside the kernel's own code: ignored.

    def _enter(self):
        if _get_ident() == self.main_ident:
            self.crit += 1

    def _leave(self):
        if _get_ident() == self.main_ident:
            self.crit -= 1
            if self.crit == 0 and self.deferred:
                self.deferred = False
                if self.in_cell:
                    raise KeyboardInterrupt

    # ------------------------------------------------------------- channel

    def recv_frame(self):
        buf = self.rbuf
        while True:
            if len(buf) >= 4:
                n = int.from_bytes(buf[:4], "big")
                if n > MAX_FRAME:
                    raise ValueError("request frame of %d bytes exceeds %d" % (n, MAX_FRAME))
                if len(buf) >= 4 + n:
                    body = bytes(buf[4:4 + n])
                    del buf[:4 + n]
                    return body
                want = 4 + n - len(buf)
            else:
                want = 4 - len(buf)
            chunk = self.sock.recv(max(want, 65536))
            if not chunk:
                return None
            buf += chunk

    def _send_locked(self):
        """Send queued frames in one write (caller holds self.lock)."""
        frames = self.frames
        if not frames:
            return
        data = frames[0] if len(frames) == 1 else b"".join(frames)
        frames.clear()
        self.flush_due = None
        try:
            self.sock.sendall(data)
        except OSError:
            # The runtime is gone: nothing left to serve.
            os._exit(0)

    # -------------------------------------------------------------- output

    def _text_locked(self, name, text):
        """Append stream text (caller holds self.lock)."""
        if not self.active:
            if self.idle_len < MAX_IDLE_HOLD:
                self.idle_hold.append((name, text))
                self.idle_len += len(text)
            else:
                self.idle_cut += len(text)
            return
        if self.pend_name != name:
            self._flush_text_locked()
            self.pend_name = name
        self.pend.append(text)
        self.pend_len += len(text)
        if self.pend_len >= STREAM_CHUNK:
            self._flush_text_locked()
            self._send_locked()
        elif self.flush_due is None:
            self.flush_due = _monotonic() + FLUSH_INTERVAL
            if self.reader_waiting:
                self.reader_waiting = False
                try:
                    _os_write(self.wake_w, b"\0")
                except OSError:
                    pass

    def _flush_text_locked(self):
        if not self.pend:
            return
        text = self.pend[0] if len(self.pend) == 1 else "".join(self.pend)
        name = self.pend_name
        cid = self.cur_id
        self.pend = []
        self.pend_len = 0
        frames = self.frames
        for i in range(0, len(text), STREAM_CHUNK):
            frames.append(_frame({"type": "stream", "id": cid, "name": name,
                                  "text": text[i:i + STREAM_CHUNK]}))

    def _drain_locked(self, budget=1 << 20):
        """Read what is waiting in the fd 1/2 pipes (caller holds self.lock)."""
        for entry in self.pipes:
            r, name, dec = entry
            if r < 0:
                continue
            while budget > 0:
                try:
                    data = _os_read(r, 65536)
                except BlockingIOError:
                    break
                except InterruptedError:
                    continue
                if not data:  # every writer closed fd 1/2: stop watching this pipe
                    os.close(r)
                    self.pipes[self.pipes.index(entry)] = (-1, name, dec)
                    break
                budget -= len(data)
                text = dec.decode(data)
                if text:
                    self._text_locked(name, text)

    def _write(self, name, fd, text):
        """A Python-level write to sys.stdout/sys.stderr."""
        if self.forked:
            self._forked_write(fd, text)
            return
        self._enter()
        try:
            with self.lock:
                self._drain_locked()
                self._text_locked(name, text)
        finally:
            self._leave()

    def _forked_write(self, fd, text):
        """In a child forked by user code: whole lines straight to fd 1/2, so that
        the lines of sibling processes (a multiprocessing pool) do not interleave."""
        buf = self.fork_buf.setdefault(fd, [])
        buf.append(text)
        if "\n" in text:
            data = "".join(buf)
            cut = data.rfind("\n") + 1
            buf[:] = [data[cut:]] if cut < len(data) else []
            self._raw_write(fd, data[:cut])

    def _raw_write(self, fd, text):
        data = text.encode("utf-8", "replace")
        try:
            while data:
                data = data[_os_write(fd, data):]
        except OSError:
            pass

    def _flush_from_user(self):
        if self.forked:
            for fd, buf in self.fork_buf.items():
                if buf:
                    self._raw_write(fd, "".join(buf))
                    buf.clear()
            return
        if not self.active:
            return
        self._enter()
        try:
            with self.lock:
                self._drain_locked()
                self._flush_text_locked()
                self._send_locked()
        finally:
            self._leave()

    def _item(self, obj, send=True):
        """Queue a rich item (result, display_data, error), keeping order with streams."""
        self._enter()
        try:
            with self.lock:
                self._drain_locked()
                self._flush_text_locked()
                obj["id"] = self.cur_id
                self.frames.append(_frame(obj))
                if send:
                    self._send_locked()
        finally:
            self._leave()

    def _reader(self):
        """Drain fds 1/2 as data arrives and flush pending text at least every 50 ms."""
        try:
            _signal.pthread_sigmask(_signal.SIG_BLOCK, _signal.valid_signals())
        except Exception:
            pass
        poller = select.poll()
        watched = set()
        while True:
            with self.lock:
                for r, _, _ in self.pipes:
                    if r >= 0 and r not in watched:
                        poller.register(r, select.POLLIN)
                        watched.add(r)
                for r in list(watched):
                    if all(r != p[0] for p in self.pipes):
                        poller.unregister(r)
                        watched.discard(r)
                if self.wake_r not in watched:
                    poller.register(self.wake_r, select.POLLIN)
                    watched.add(self.wake_r)
                due = self.flush_due
                self.reader_waiting = due is None
            timeout = None if due is None else max(0.0, due - _monotonic()) * 1000.0
            try:
                poller.poll(timeout)
            except InterruptedError:
                continue
            if self.forked:
                return
            with self.lock:
                try:
                    while _os_read(self.wake_r, 512):
                        pass
                except OSError:
                    pass
                self._drain_locked()
                if self.flush_due is not None and _monotonic() >= self.flush_due:
                    self._flush_text_locked()
                    self._send_locked()

    # ---------------------------------------------------------------- cells

    def serve_forever(self):
        hello = {"type": "hello", "protocol": PROTOCOL, "pid": _os_getpid(),
                 "python": sys.version.split()[0]}
        if self.timing is not None:
            hello["timing"] = dict(self.timing, ready_ns=time.monotonic_ns())
        self.frames.append(_frame(hello))
        with self.lock:
            self._send_locked()
        while True:
            body = self.recv_frame()
            if body is None:
                os._exit(0)
            try:
                req = _loads(body)
                kind = req["type"]
            except Exception:
                continue  # the runtime is trusted; a malformed request is dropped
            if kind == "execute":
                self.execute(int(req["id"]), str(req["code"]))
            elif kind == "warmup":
                self.warmup(int(req["id"]))
            elif kind == "shutdown":
                self._c_flush()
                os._exit(0)

    def _cell_start(self, cid):
        # A cell that redirected or replaced the streams affects that cell only.
        if sys.stdout is not self.out_w:
            sys.stdout = self.out_w
        if sys.stderr is not self.err_w:
            sys.stderr = self.err_w
        self._enter()
        try:
            with self.lock:
                self.cur_id = cid
                self.active = True
                if self.idle_hold:
                    held = self.idle_hold
                    self.idle_hold = []
                    self.idle_len = 0
                    for name, text in held:
                        self._text_locked(name, text)
                    if self.idle_cut:
                        self._text_locked("stderr", "[dsbox: %d characters of output "
                                          "written between cells were cut]\n" % self.idle_cut)
                        self.idle_cut = 0
        finally:
            self._leave()

    def _c_flush(self):
        if self._fflush is not None:
            try:
                self._fflush(None)  # C stdio buffers (printf in extensions)
            except Exception:
                pass

    def _cell_end(self, cid, status, n, t0):
        self._c_flush()
        self._enter()
        try:
            with self.lock:
                self._drain_locked()
                self._flush_text_locked()
                self.frames.append(_frame({
                    "type": "done", "id": cid, "status": status, "execution_count": n,
                    "timing": {"run_us": int((_perf() - t0) * 1e6)}}))
                self._send_locked()
                self.active = False
                self.flush_due = None
        finally:
            self._leave()

    def warmup(self, cid):
        """A throwaway `1+1` through the whole cell path, in a scratch namespace: the first
        cell of a forked kernel pays for the pages and caches that later cells reuse.
        Leaves no trace (execution count, namespace and `_` unchanged)."""
        saved_ns, saved_count = self.ns, self.count
        self.ns = {"__builtins__": _builtins_module}
        try:
            self.execute(cid, "1+1")
        finally:
            self.ns = saved_ns
            self.count = saved_count

    def execute(self, cid, code):
        t0 = _perf()
        self.count += 1
        n = self.count
        self._cell_start(cid)
        status = "error"
        try:
            status = self._run(code, n)
        except KeyboardInterrupt as e:
            # An interrupt that landed between user code and the kernel's bookkeeping.
            self.in_cell = False
            status = "interrupted"
            self._emit_exception(e)
        except BaseException as e:  # a failure of the kernel itself: report, keep serving
            self.in_cell = False
            self._emit_exception(e)
        finally:
            self.in_cell = False
            self.deferred = False
        self._cell_end(cid, status, n, t0)

    def _run(self, code, n):
        filename = "<cell-%d>" % n
        api = None
        try:
            cell_magic = None
            if code.startswith("%%") or (code.lstrip().startswith("%%")):
                cell_magic, code = self._split_cell_magic(code)
            if cell_magic is not None:
                return self._run_cell_magic(cell_magic, code, n)
            code = _automagic(code, self.ns)
            if "!" in code or "%" in code or "?" in code:
                code, api = _transform(code)
            body, expr, show = self._compile(code, filename)
        except SyntaxError as e:
            self._emit_syntax_error(e)
            return "error"
        except _UsageError as e:
            self._emit_exception(e)
            return "error"
        ns = self.ns
        if api is not None:
            ns["__dsbox__"] = _MagicApi(self)
        return self._run_compiled(body, expr, show, ns)

    def _run_compiled(self, body, expr, show, ns):
        status = "ok"
        error = None
        self.in_cell = True
        try:
            if body is not None:
                if body.co_flags & _CO_COROUTINE:
                    self._await(_eval(body, ns))
                else:
                    _exec(body, ns)
            if expr is not None:
                if expr is _AWAIT_VALUE:
                    value = ns.pop(_AWAIT_VALUE, None)
                elif expr.co_flags & _CO_COROUTINE:  # a one-line expression
                    value = self._await(_eval(expr, ns))
                else:
                    value = _eval(expr, ns)
                if show and value is not None:
                    ns["_"] = value
                    self._display(value, "result")
        except KeyboardInterrupt as e:
            self.in_cell = False
            status = "interrupted"
            error = e
        except BaseException as e:
            self.in_cell = False
            status = "error"
            error = e
        finally:
            self.in_cell = False
        if error is not None:
            self._emit_exception(error)
            error = None
        # Figures are shown after the result or error, as Jupyter's inline backend does;
        # after an interrupt they are closed without rendering.
        self.in_cell = True
        try:
            self._flush_figures(render=status != "interrupted")
        except KeyboardInterrupt:
            self.in_cell = False
            status = "interrupted"
        except BaseException as e:
            self.in_cell = False
            self._emit_exception(e)
            if status == "ok":
                status = "error"
        finally:
            self.in_cell = False
        return status

    def _compile(self, src, filename):
        """Compile a cell once; the last statement, if an expression, is the result."""
        if src[:1] in (" ", "\t"):
            import textwrap
            src = textwrap.dedent(src)
        self._remember_source(filename, src)
        stripped = src.strip()
        # Fast path: a one-line expression (`1+1`, `df.head()`).
        if stripped and "\n" not in stripped and not stripped.endswith(";"):
            try:
                return None, _compile(stripped, filename, "eval", _TOP_LEVEL_AWAIT), True
            except SyntaxError:
                pass
        tree = _compile(src, filename, "exec", ast.PyCF_ONLY_AST)
        body = tree.body
        expr = None
        show = False
        if body and isinstance(body[-1], ast.Expr):
            last = body.pop()
            show = not _suppressed(src, last)
            expr = _compile(ast.Expression(last.value), filename, "eval", _TOP_LEVEL_AWAIT)
        code = _compile(tree, filename, "exec", _TOP_LEVEL_AWAIT) if body else None
        if any(c is not None and c.co_flags & _CO_COROUTINE for c in (code, expr)):
            # A cell with top-level await runs as one coroutine (statements before the
            # awaiting expression must run inside the loop too); its value is kept in
            # a name the cell cannot collide with.
            if expr is not None:
                target = ast.Name(id=_AWAIT_VALUE, ctx=ast.Store())
                body.append(ast.copy_location(ast.Assign(targets=[target], value=last.value),
                                              last))
                ast.fix_missing_locations(tree)
            code = _compile(tree, filename, "exec", _TOP_LEVEL_AWAIT)
            expr = _AWAIT_VALUE if expr is not None else None
        return code, expr, show

    def _await(self, coro):
        """Run a cell with top-level `await` (IPython's autoawait) on the kernel's event
        loop, kept across cells so that tasks a cell starts live on."""
        import asyncio
        loop = self.loop
        if loop is None or loop.is_closed():
            loop = self.loop = asyncio.new_event_loop()
        task = loop.create_task(coro)
        try:
            return loop.run_until_complete(task)
        except BaseException as e:
            tb = e.__traceback__
            if not task.done():
                # Interrupted while the cell waited in the loop: the traceback is where
                # the cell waits, and the rest of the cell must not run later, when
                # another cell runs the loop.
                import types
                tb = None
                for frame in reversed(task.get_stack()):
                    tb = types.TracebackType(tb, frame, frame.f_lasti, frame.f_lineno)
                task.cancel()
                try:
                    loop.run_until_complete(asyncio.wait([task], timeout=1.0))
                except BaseException:
                    pass
            # The loop's own frames are not the user's.
            while tb is not None and tb.tb_frame.f_code.co_filename.startswith(
                    (_ASYNCIO_DIR, _KFILE)):
                tb = tb.tb_next
            raise e.with_traceback(tb)

    def _remember_source(self, filename, src):
        lines = src.splitlines(True)
        linecache.cache[filename] = (len(src), None, lines, filename)
        self.cells.append(filename)
        if len(self.cells) > LINECACHE_CELLS:
            linecache.cache.pop(self.cells.pop(0), None)

    # ------------------------------------------------------------- display

    def display(self, *objs, include=None, exclude=None, raw=False, display_id=None,
                **kwargs):
        """IPython's display(): each object as a display_data item; with `raw=True` each
        object is a MIME bundle already. `metadata`, `transient` and `clear` are taken and
        ignored; a `display_id` gets a handle whose update() shows the object again (the
        items of a cell are a list: nothing is replaced in place)."""
        for obj in objs:
            if raw:
                self.publish(obj)
            else:
                data = _format(obj)
                if include is not None:
                    data = {k: v for k, v in data.items() if k in include}
                if exclude is not None:
                    data = {k: v for k, v in data.items() if k not in exclude}
                if data:
                    self._item({"type": "display_data", "data": data})
        if display_id is not None:
            return _DisplayHandle(self, display_id)
        return None

    def publish(self, data, *args, **kwargs):
        """IPython's publish_display_data(): a display_data item from a MIME bundle."""
        if not isinstance(data, dict):
            raise TypeError("a MIME bundle is a dict of MIME type to data, not %s"
                            % type(data).__name__)
        bundle = {}
        for mime, v in data.items():
            v = _mime_value(mime, v) if isinstance(mime, str) else None
            if v is not None:
                bundle[mime] = v
        bundle = _capped(bundle)
        if bundle:
            self._item({"type": "display_data", "data": bundle})

    def _display(self, value, kind):
        data = _format(value)
        self._item({"type": kind, "data": data}, send=kind != "result")

    def _flush_figures(self, render=True):
        helpers = sys.modules.get("matplotlib._pylab_helpers")
        if helpers is None:
            return
        managers = helpers.Gcf.get_all_fig_managers()
        if not managers:
            return
        try:
            if render:
                for manager in managers:
                    self._show_figure(manager.canvas.figure)
        finally:
            pyplot = sys.modules.get("matplotlib.pyplot")
            if pyplot is not None:
                pyplot.close("all")
            else:
                helpers.Gcf.destroy_all()

    def _show_figure(self, fig):
        buf = io.BytesIO()
        fig.savefig(buf, format="png", bbox_inches="tight")
        png = buf.getvalue()
        text = _repr(fig)
        if len(png) > MAX_PNG_BYTES:
            data = {"text/plain": "%s (PNG of %d bytes not shown: over the %d-byte limit)"
                    % (text, len(png), MAX_PNG_BYTES)}
        else:
            data = {"image/png": _b64encode(png).decode("ascii"), "text/plain": text}
        self._item({"type": "display_data", "data": data})

    # -------------------------------------------------------------- errors

    def _emit_exception(self, e):
        if type(e) is _UsageError:
            # A magic unknown or misused: IPython shows the message alone.
            self._item({"type": "error", "name": "UsageError", "value": str(e),
                        "traceback": ["UsageError: %s" % e]})
            return
        name = type(e).__name__
        try:
            value = str(e)
        except BaseException:
            value = "<exception str() failed>"
        try:
            lines = _with_builtins(_format_traceback, e)
        except BaseException:
            lines = ["%s: %s" % (name, value)]
        self._item({"type": "error", "name": name, "value": _cut_text(value, MAX_MIME_CHARS),
                    "traceback": lines})

    def _emit_syntax_error(self, e):
        try:
            lines = _with_builtins(traceback.format_exception_only, type(e), e)
            lines = "".join(lines).splitlines()
        except BaseException:
            lines = ["%s: %s" % (type(e).__name__, e)]
        self._item({"type": "error", "name": type(e).__name__, "value": str(e),
                    "traceback": lines})

    # -------------------------------------------------------------- magics

    @staticmethod
    def _split_cell_magic(code):
        code = code.lstrip("\n")
        first, _, rest = code.partition("\n")
        return first.strip()[2:], rest

    def _run_cell_magic(self, line, body, n):
        name, _, arg = line.partition(" ")
        arg = arg.strip()
        if name == "time":
            t0 = _perf()
            c0 = time.process_time()
            status = self._run(body, n)
            self._write("stdout", 1, "CPU times: total: %s\nWall time: %s\n" % (
                _fmt_timespan(time.process_time() - c0), _fmt_timespan(_perf() - t0)))
            return status
        if name == "timeit":
            return self._run_magic_call(lambda: _timeit_magic(arg, self.ns, {}, body))
        if name in ("bash", "sh"):
            shell = "/bin/bash" if name == "bash" and os.path.exists("/bin/bash") else "/bin/sh"
            return self._run_magic_call(lambda: _MagicApi(self).run_shell(body, shell=shell))
        if name == "writefile":
            return self._run_magic_call(lambda: _writefile(self, arg, body))
        if name == "capture":
            return self._run_magic_call(lambda: _MagicApi(self).capture(arg, body, n))
        if name == "html":
            return self._run_magic_call(
                lambda: self._item({"type": "display_data",
                                    "data": {"text/html": body, "text/plain": "<HTML>"}}))
        self._emit_exception(_UsageError("Cell magic `%%%%%s` not found." % name))
        return "error"

    def _run_magic_call(self, fn):
        self.in_cell = True
        try:
            fn()
        except KeyboardInterrupt as e:
            self.in_cell = False
            self._emit_exception(e)
            return "interrupted"
        except BaseException as e:
            self.in_cell = False
            self._emit_exception(e)
            return "error"
        finally:
            self.in_cell = False
        return "ok"


# ------------------------------------------------------------------ formatting

_PRETTY_TYPES = (dict, list, tuple, set, frozenset)
_MIME_METHODS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
    ("application/json", "_repr_json_"),
)


def _pretty(value):
    """text/plain as IPython shows it: repr, pretty-printed for long builtin containers."""
    text = _repr(value)
    if type(value) in _PRETTY_TYPES and 79 < len(text) <= 200000:
        import pprint
        try:
            text = _with_builtins(lambda: pprint.pformat(value, width=79, sort_dicts=False))
        except Exception:  # a broken __repr__ inside: keep the plain repr
            pass
    return text


def _with_builtins(fn, *args):
    """Run stdlib code (traceback, pprint) with builtins a cell deleted put back meanwhile."""
    real = _builtins_module.__dict__
    missing = [k for k in __builtins__ if k not in real]
    for k in missing:
        real[k] = __builtins__[k]
    try:
        return fn(*args)
    finally:
        for k in missing:
            real.pop(k, None)


def _format(value):
    data = {}
    if not isinstance(value, type):
        bundle = _safe_call(value, "_repr_mimebundle_")
        if isinstance(bundle, tuple) and bundle:
            bundle = bundle[0]
        if isinstance(bundle, dict):
            for mime, v in bundle.items():
                v = _mime_value(mime, v)
                if isinstance(mime, str) and v is not None:
                    data[mime] = v
        for mime, method in _MIME_METHODS:
            if mime in data:
                continue
            v = _mime_value(mime, _safe_call(value, method))
            if v is not None:
                data[mime] = v
    if "text/plain" not in data:
        data["text/plain"] = _pretty(value)
    return _capped(data)


def _capped(data):
    """A MIME bundle within the caps: long text cut, other data over the cap dropped."""
    for mime, v in data.items():
        if len(v) > MAX_MIME_CHARS:
            data[mime] = (_cut_text(v, MAX_MIME_CHARS) if mime.startswith("text/")
                          else None)
    return {k: v for k, v in data.items() if v is not None}


def _mime_value(mime, v):
    if v is None:
        return None
    if isinstance(v, tuple) and v:  # (data, metadata)
        v = v[0]
    if isinstance(v, (bytes, bytearray)):
        if mime.startswith("image/") and mime != "image/svg+xml":
            return _b64encode(bytes(v)).decode("ascii")
        return bytes(v).decode("utf-8", "replace")
    if isinstance(v, str):
        return v
    if mime == "application/json" and isinstance(v, (dict, list)):
        try:
            return json.dumps(v)
        except (TypeError, ValueError):
            return None
    return None


def _safe_call(value, name):
    """Call a `_repr_*_` method if the object really has one; failures are skipped."""
    try:
        method = getattr(value, name, None)
    except Exception:
        return None
    if method is None or not callable(method):
        return None
    try:
        return method()
    except KeyboardInterrupt:
        raise
    except Exception:
        return None


def _suppressed(src, last):
    """IPython semantics: a trailing `;` after the last expression hides the result."""
    lines = src.splitlines()
    if not lines or last.end_lineno is None or last.end_lineno > len(lines):
        return False
    line = lines[last.end_lineno - 1].encode("utf-8")
    rest = line[last.end_col_offset:].decode("utf-8", "ignore")
    return rest.lstrip().startswith(";")


def _format_traceback(e):
    """Traceback lines without ANSI codes and without the kernel's own frames."""
    te = traceback.TracebackException(type(e), e, e.__traceback__)
    seen = set()
    todo = [te]
    while todo:
        t = todo.pop()
        if t is None or id(t) in seen:
            continue
        seen.add(id(t))
        t.stack = traceback.StackSummary.from_list(
            [f for f in t.stack if f.filename != _KFILE])
        todo.append(t.__cause__)
        todo.append(t.__context__)
        todo.extend(getattr(t, "exceptions", None) or ())
    text = _cut_text("".join(te.format()), MAX_TRACEBACK_CHARS)
    return text.splitlines()


# ---------------------------------------------------------------- cell transforms

# Line magics the kernel accepts. No-ops are documented in docs/kernel.md.
LINE_MAGICS = ("matplotlib", "config", "load_ext", "reload_ext", "autoreload", "cd", "pwd",
               "env", "pip", "time", "timeit", "reset", "run", "who", "whos", "precision")
# IPython's default shell aliases on POSIX, as line magics (`%ls -l`): name -> command.
SHELL_ALIASES = {"cat": "cat", "cp": "cp", "ll": "ls -F -o", "ls": "ls -F", "mkdir": "mkdir",
                 "mv": "mv", "rm": "rm", "rmdir": "rmdir", "less": "less", "more": "more",
                 "man": "man", "clear": None}
MAGIC_NAMES = frozenset(LINE_MAGICS) | frozenset(SHELL_ALIASES)
# A one-line cell that may be an automagic call: indent, a name, then nothing or a space
# and the rest of that one line. A cell of more lines does not match.
_AUTOMAGIC_LINE = re.compile(r"(\s*)([A-Za-z_]\w*)([ \t][^\n]*)?\s*\Z")
CELL_MAGICS = ("time", "timeit", "bash", "sh", "writefile", "capture", "html")


def _logical_starts(lines):
    """For each line: does it start a new logical line (not inside a string/brackets)?"""
    out = []
    depth = 0
    quote = None
    cont = False
    for line in lines:
        out.append(depth == 0 and quote is None and not cont)
        cont = False
        i = 0
        n = len(line)
        while i < n:
            c = line[i]
            if quote is not None:
                if c == "\\":
                    i += 2
                    continue
                if line.startswith(quote, i):
                    i += len(quote)
                    quote = None
                    continue
                i += 1
                continue
            if c == "#":
                break
            if c == "'" or c == '"':
                if line.startswith(c * 3, i):
                    quote = c * 3
                    i += 3
                else:
                    quote = c
                    i += 1
                continue
            if c in "([{":
                depth += 1
            elif c in ")]}":
                depth = max(0, depth - 1)
            elif c == "\\" and i == n - 1:
                cont = True
            i += 1
        if quote is not None and len(quote) == 1 and not line.endswith("\\"):
            quote = None
    return out


def _automagic(code, ns):
    """IPython's automagic: a one-line cell starting with a magic's or shell alias's name
    (`ls -l /data`, `cd /tmp`, `pwd`) runs the magic unless a variable, builtin or
    keyword of that name shadows it or the line assigns to it (`ls = 1`). As in IPython
    7 and later, cells of more than one line are left alone."""
    m = _AUTOMAGIC_LINE.match(code)  # fails at once for most cells: `1+1`, `df.head()`
    if m is None:
        return code
    name, rest = m.group(2), m.group(3) or ""
    if (name not in MAGIC_NAMES or name in ns or hasattr(_builtins_module, name)
            or _iskeyword(name) or rest.lstrip()[:1] in ("=", ",")):
        return code
    return "%s%%%s" % (m.group(1), code[len(m.group(1)):])


def _transform(code):
    """Rewrite `!cmd`, `x = !cmd`, `%magic`, `x = %magic` and `obj?` lines into calls on
    __dsbox__."""
    lines = code.split("\n")
    starts = _logical_starts(lines)
    changed = False
    assign = re.compile(r"^([ \t]*)([A-Za-z_][\w.]*(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*)*)"
                        r"[ \t]*=[ \t]*!(.*)$")
    assign_magic = re.compile(r"^([ \t]*)([A-Za-z_][\w.]*(?:[ \t]*,[ \t]*[A-Za-z_][\w.]*)*)"
                              r"[ \t]*=[ \t]*%([A-Za-z_]\w*)(.*)$")
    help_line = re.compile(r"^([ \t]*)(\?\??)?([A-Za-z_][\w.]*)(\?\??)?[ \t]*$")
    for i, line in enumerate(lines):
        if not starts[i]:
            continue
        stripped = line.lstrip()
        indent = line[:len(line) - len(stripped)]
        if stripped.startswith("!"):
            lines[i] = "%s__dsbox__.system(%r)" % (indent, stripped[1:])
            changed = True
        elif stripped.startswith("%") and not stripped.startswith("%%"):
            name, _, arg = stripped[1:].partition(" ")
            if name not in MAGIC_NAMES:
                raise _UsageError("Line magic function `%%%s` not found." % name)
            lines[i] = "%s__dsbox__.magic(%r, %r)" % (indent, name, arg.strip())
            changed = True
        else:
            m = help_line.match(line)
            if m and (m.group(2) or m.group(4)):
                detail = len(m.group(2) or m.group(4)) == 2
                lines[i] = "%s__dsbox__.pinfo(%r, %r)" % (m.group(1), m.group(3), detail)
                changed = True
                continue
            m = assign.match(line)
            if m:
                lines[i] = "%s%s = __dsbox__.getoutput(%r)" % (m.group(1), m.group(2), m.group(3))
                changed = True
            m = assign_magic.match(line)
            if m:
                name = m.group(3)
                if name not in MAGIC_NAMES:
                    raise _UsageError("Line magic function `%%%s` not found." % name)
                lines[i] = "%s%s = __dsbox__.magic(%r, %r)" % (
                    m.group(1), m.group(2), name, m.group(4).strip())
                changed = True
    if not changed:
        return code, None
    return "\n".join(lines), True


class _MagicApi:
    """What transformed `!cmd` and `%magic` lines call (bound to the kernel)."""

    def __init__(self, kernel):
        self._k = kernel

    def _caller_ns(self):
        frame = sys._getframe(2)
        ns = dict(frame.f_globals)
        ns.update(frame.f_locals)
        return ns

    def system(self, cmd):
        self.run_shell(_expand(cmd, self._caller_ns()))

    def pinfo(self, expr, detail):
        """`obj?` and `obj??`: what IPython's pager shows, printed (the agent reads it)."""
        import inspect
        try:
            obj = _eval(expr, self._caller_ns())
        except Exception:
            print("Object `%s` not found." % expr)
            return
        fields = []
        if callable(obj):
            try:
                fields.append(("Signature", expr + str(inspect.signature(obj))))
            except (TypeError, ValueError):
                pass
        else:
            text = _repr(obj)
            fields.append(("String form", text if len(text) <= 200 else text[:200] + "..."))
            try:
                fields.append(("Length", str(len(obj))))
            except Exception:
                pass
        source = None
        if detail:
            try:
                source = inspect.getsource(obj)
            except (OSError, TypeError):
                pass
        if source:
            fields.append(("Source", source.rstrip("\n")))
        else:
            fields.append(("Docstring", inspect.getdoc(obj) or "<no docstring>"))
        try:
            fields.append(("File", inspect.getfile(obj)))
        except TypeError:
            pass
        fields.append(("Type", type(obj).__name__))
        out = []
        for name, value in fields:
            label = name + ":"
            out.append("%s\n%s" % (label, value) if "\n" in value
                       else "%-11s%s" % (label, value))
        print("\n".join(out))

    def getoutput(self, cmd):
        import subprocess
        cmd = _expand(cmd, self._caller_ns())
        proc = subprocess.run(cmd, shell=True, executable=_shell(), stdin=subprocess.DEVNULL,
                              stdout=subprocess.PIPE)
        self._k.ns["_exit_code"] = proc.returncode
        return proc.stdout.decode("utf-8", "replace").splitlines()

    def run_shell(self, cmd, shell=None):
        import subprocess
        proc = subprocess.run(cmd, shell=True, executable=shell or _shell(),
                              stdin=subprocess.DEVNULL)
        self._k.ns["_exit_code"] = proc.returncode
        # Make the command's output land before whatever the cell prints next.
        self._k._flush_from_user()

    def capture(self, arg, body, n):
        k = self._k
        out, err = io.StringIO(), io.StringIO()
        old = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = out, err
        try:
            k._run(body, n)
        finally:
            sys.stdout, sys.stderr = old
        if arg:
            k.ns[arg.split()[0]] = _Captured(out.getvalue(), err.getvalue())

    def magic(self, name, arg):
        k = self._k
        if name not in ("time", "timeit") and ("$" in arg or "{" in arg):
            # IPython expands $name and {expr} in every line magic's argument but
            # these two, whose argument is Python code.
            arg = _expand(arg, self._caller_ns())
        if name in ("matplotlib", "config", "load_ext", "reload_ext", "autoreload",
                    "precision"):
            return None  # accepted, no effect (figures are always inline PNG)
        if name == "cd":
            target = os.path.expanduser(arg.strip("'\"") or "~")
            os.chdir(target)
            print(os.getcwd())
            return None
        if name == "pwd":
            return os.getcwd()
        if name == "env":
            return _env_magic(arg)
        if name == "pip":
            self.run_shell("%s -m pip %s" % (_shquote(sys.executable), arg))
            print("Note: you may need to restart the kernel to use updated packages.")
            return None
        if name == "time":
            frame = sys._getframe(1)
            return _time_magic(arg, frame.f_globals, frame.f_locals)
        if name == "timeit":
            frame = sys._getframe(1)
            return _timeit_magic(arg, frame.f_globals, frame.f_locals)
        if name == "reset":
            if "-f" not in arg.split():
                raise _UsageError("%reset needs -f (the kernel cannot ask for confirmation)")
            keep = {key: v for key, v in k.ns.items() if key.startswith("__")}
            k.ns.clear()
            k.ns.update(keep)
            k.ns["display"] = k.display
            return None
        if name == "run":
            import runpy
            import shlex
            argv = shlex.split(arg)
            if not argv:
                raise _UsageError("%run needs a file name")
            old_argv = sys.argv
            sys.argv = argv
            try:
                result = runpy.run_path(argv[0], run_name="__main__")
            finally:
                sys.argv = old_argv
            k.ns.update({key: v for key, v in result.items() if not key.startswith("__")})
            return None
        if name in SHELL_ALIASES:
            command = SHELL_ALIASES[name]
            if command is not None:
                self.run_shell(("%s %s" % (command, arg)).strip())
            return None
        if name in ("who", "whos"):
            names = sorted(key for key in k.ns if not key.startswith("_")
                           and key not in ("display", "In", "Out"))
            if not names:
                print("Interactive namespace is empty.")
            elif name == "who":
                print("\t".join(names))
            else:
                _whos(k.ns, names)
            return None
        raise _UsageError("Line magic function `%%%s` not found." % name)


class _Captured:
    def __init__(self, stdout, stderr):
        self.stdout = stdout
        self.stderr = stderr

    def show(self):
        sys.stdout.write(self.stdout)
        sys.stderr.write(self.stderr)

    def __repr__(self):
        return "<captured output: %d chars stdout, %d chars stderr>" % (
            len(self.stdout), len(self.stderr))


def _shell():
    return "/bin/bash" if os.path.exists("/bin/bash") else "/bin/sh"


def _shquote(s):
    import shlex
    return shlex.quote(s)


def _expand(cmd, ns):
    """IPython's expansion in shell commands: {expr} and $name from the user's namespace."""
    def expr(m):
        try:
            return str(_eval(m.group(1), ns))
        except Exception:
            return m.group(0)

    def name(m):
        if m.group(1) in ns:
            return str(ns[m.group(1)])
        return m.group(0)

    if "{" in cmd:
        cmd = re.sub(r"\{([^{}]+)\}", expr, cmd)
    if "$" in cmd:
        cmd = re.sub(r"(?<!\$)\$([A-Za-z_]\w*)", name, cmd)
        cmd = cmd.replace("$$", "$")
    return cmd


def _whos(ns, names):
    """`%whos`: IPython's table of variables, their types and a short form of each."""
    rows = []
    for key in names:
        value = ns[key]
        kind = type(value).__name__
        if isinstance(value, (list, tuple, dict, set, frozenset)):
            info = "n=%d" % len(value)
        elif type(value).__module__ == "numpy" and kind == "ndarray":
            info = "%s: %d elems, type `%s`, %d bytes" % (
                "x".join(map(str, value.shape)), value.size, value.dtype, value.nbytes)
        else:
            try:
                info = str(value)
            except Exception:
                info = "<str() failed>"
            info = info.replace("\n", "\\n")
            if len(info) > 50:
                info = info[:25] + "<...>" + info[-25:]
        rows.append((key, kind, info))
    name_w = max(len("Variable"), *(len(r[0]) for r in rows)) + 3
    kind_w = max(len("Type"), *(len(r[1]) for r in rows)) + 3
    print("%-*s%-*sData/Info" % (name_w, "Variable", kind_w, "Type"))
    print("-" * (name_w + kind_w + len("Data/Info")))
    for key, kind, info in rows:
        print("%-*s%-*s%s" % (name_w, key, kind_w, kind, info))


def _env_magic(arg):
    arg = arg.strip()
    if not arg:
        return dict(os.environ)
    if "=" in arg:
        key, _, value = arg.partition("=")
    elif " " in arg:
        key, _, value = arg.partition(" ")
    else:
        if arg not in os.environ:
            raise _UsageError("Environment does not have key: %s" % arg)
        return os.environ[arg]
    os.environ[key.strip()] = value.strip()
    print("env: %s=%s" % (key.strip(), value.strip()))
    return None


def _time_magic(stmt, globs, locs):
    c0 = time.process_time()
    t0 = _perf()
    try:
        code = _compile(stmt, "<timed>", "eval")
        is_expr = True
    except SyntaxError:
        code = _compile(stmt, "<timed exec>", "exec")
        is_expr = False
    result = _eval(code, globs, locs) if is_expr else _exec(code, globs, locs)
    print("CPU times: total: %s\nWall time: %s" % (
        _fmt_timespan(time.process_time() - c0), _fmt_timespan(_perf() - t0)))
    return result if is_expr else None


class TimeitResult:
    """What `%timeit -o` returns, with IPython's attribute names."""

    def __init__(self, loops, repeat, all_runs, precision):
        self.loops = loops
        self.repeat = repeat
        self.all_runs = all_runs  # seconds per run of `loops` loops
        self.timings = [t / loops for t in all_runs]
        self.best = min(self.timings)
        self.worst = max(self.timings)
        self.average = sum(self.timings) / len(self.timings)
        self.stdev = (sum((t - self.average) ** 2 for t in self.timings)
                      / len(self.timings)) ** 0.5
        self._precision = precision

    def __str__(self):
        runs, loops = self.repeat, self.loops
        return "%s \u00b1 %s per loop (mean \u00b1 std. dev. of %d run%s, %s loop%s each)" % (
            _fmt_timespan(self.average, self._precision),
            _fmt_timespan(self.stdev, self._precision),
            runs, "" if runs == 1 else "s", format(loops, ","), "" if loops == 1 else "s")

    def __repr__(self):
        return "<TimeitResult : %s>" % self


def _fmt_timespan(seconds, precision=3):
    """IPython's `_format_time`: `precision` significant digits in s, ms, \u00b5s or ns."""
    import math
    if seconds >= 60.0:
        parts = []
        for suffix, length in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
            value = int(seconds / length)
            if value > 0:
                seconds %= length
                parts.append("%s%s" % (value, suffix))
            if seconds < 1:
                break
        return " ".join(parts)
    units = ("s", "ms", "\u00b5s", "ns")
    order = min(-int(math.floor(math.log10(seconds)) // 3), 3) if seconds > 0.0 else 3
    return "%.*g %s" % (precision, seconds * 1000.0 ** order, units[order])


def _timeit_options(arg):
    """Split IPython's `%timeit` options (-n<N> -r<R> -p<P> -t -c -q -o, each value
    attached or separate) from the statement, which keeps its own spacing."""
    options = {}
    rest = arg.lstrip()
    while rest.startswith("-") and len(rest) > 1 and rest[1] in "nrptcqo":
        token, _, after = rest.partition(" ")
        flags = token[1:]
        while flags:
            flag, flags = flags[0], flags[1:]
            if flag not in "nrptcqo":
                raise _UsageError("%%timeit: option -%s not recognized" % flag)
            if flag in "nrp":
                if not flags:
                    flags, _, after = after.lstrip().partition(" ")
                try:
                    value = int(flags)
                except ValueError:
                    raise _UsageError("%%timeit -%s needs a whole number, not %r"
                                      % (flag, flags)) from None
                if value < 1:
                    raise _UsageError("%%timeit -%s needs a number of at least 1" % flag)
                options[flag] = value
                flags = ""
            else:
                options[flag] = True
        rest = after.lstrip()
    return options, rest


def _timeit_magic(arg, globs, locs, body=None):
    """`%timeit [options] STMT`, or `%%timeit [options] [SETUP]` with the cell as STMT,
    measured as IPython does: loops by powers of ten until a run takes 0.2 s, 7 runs."""
    import timeit
    options, rest = _timeit_options(arg)
    stmt, setup = (rest, "pass") if body is None else (body, rest or "pass")
    if not stmt.strip():
        raise _UsageError("%timeit needs a statement")
    ns = dict(globs)
    ns.update(locs)
    timer = timeit.Timer(stmt, setup, timer=_perf, globals=ns)
    number = options.get("n")
    if number is None:
        for power in range(10):
            number = 10 ** power
            if timer.timeit(number) >= 0.2:
                break
    repeat = options.get("r", 7)
    result = TimeitResult(number, repeat, timer.repeat(repeat=repeat, number=number),
                          options.get("p", 3))
    if not options.get("q"):
        if result.worst > 4 * result.best and result.best > 0 and result.worst > 1e-6:
            print("The slowest run took %0.2f times longer than the fastest. This could "
                  "mean that an intermediate result is being cached."
                  % (result.worst / result.best))
        print(result)
    return result if options.get("o") else None


def _writefile(kernel, arg, body):
    import shlex
    argv = shlex.split(arg)
    append = False
    if argv and argv[0] in ("-a", "--append"):
        append = True
        argv = argv[1:]
    if len(argv) != 1:
        raise _UsageError("%%writefile needs one file name (and optionally -a)")
    path = os.path.expanduser(argv[0])
    exists = os.path.exists(path)
    with open(path, "a" if append else "w", encoding="utf-8") as f:
        f.write(body if body.endswith("\n") or not body else body + "\n")
    verb = "Appending to" if append else ("Overwriting" if exists else "Writing")
    print("%s %s" % (verb, argv[0]))


# -------------------------------------------------------------------- entry points

def serve(channel_fd, timing=None):
    """Serve cells on `channel_fd` until the runtime closes the channel. Never returns.

    `timing`: CLOCK_MONOTONIC timestamps (ns) of the steps before serve (the zygote
    child's fork and join), sent with the hello together with the moment it is sent.
    """
    kernel = Kernel(channel_fd)
    kernel.timing = timing
    kernel.setup()
    try:
        kernel.serve_forever()
    finally:
        os._exit(0)


def main(argv=None):
    """Standalone mode: `python dsbox_kernel.py --channel-fd N`."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2 or argv[0] != "--channel-fd" or not argv[1].isdigit():
        sys.stderr.write("usage: dsbox_kernel.py --channel-fd N\n")
        return 2
    fd = int(argv[1])
    try:
        os.fstat(fd)
    except OSError as e:
        sys.stderr.write("dsbox_kernel: channel fd %d is not open (%s): pass the fd of "
                         "a connected unix socket\n" % (fd, e.strerror))
        return 2
    for name in PRELOAD:
        __import__(name)
    serve(fd)
    return 0


if __name__ == "__main__":
    # Run as a script: make the module importable under its own name (the matplotlib
    # backend and the zygote refer to it), then serve.
    sys.modules.setdefault("dsbox_kernel", sys.modules["__main__"])
    sys.exit(main())
