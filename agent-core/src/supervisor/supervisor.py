# The containerized-agent supervisor: one long-lived process inside every sandbox.
#
# It runs as `python3 -I -S -c <this file> MODE [WORKSPACE]` and speaks a framed protocol with the
# host over its stdin/stdout (agent_core::supervisor documents it; the Rust side is the reference):
#
#   frame  = header "\n" body
#   header = one line of JSON; when it has "n", exactly n raw body bytes follow the newline.
#
# host -> supervisor: {"op": "run"|"kill"|"write"|"read"|"export"|"ping"|"connect"|"handoff"|"service",
#                      "id": N, ...}
# supervisor -> host: {"ev": "ready"|"started"|"out"|"exit"|"ok"|"data"|"chunk"|"err", "id": N, ...}
#
# MODE is `contained` (inside a container of its own: the workspace is /workspace, and killing a
# step kills every process but PID 1 and this one) or `local` (a plain host process, for tests: the
# workspace is the WORKSPACE argument and killing a step kills its process group only). Without a
# valid MODE it refuses to start; `contained` also refuses unless it or its parent is PID 1, so it
# can never `kill(-1)` on a host by mistake.
#
# Steps run in their own session (process group). When a step times out, is cancelled or floods its
# output, every process in the container except PID 1, this supervisor and the services' process
# trees (see "Services") is SIGKILLed, so nothing the step started survives. Paths are confined to the workspace: every component is opened with
# O_NOFOLLOW relative to its parent, and a symbolic link is only followed when it resolves inside.
#
# Start-up cost matters (it is part of every cold sandbox): only built-in or tiny modules are
# imported here; `subprocess`, `signal`, `threading` and `json` would pull in selectors, enum,
# locale, re, ... Steps are started with posix_spawn or os.fork()/os.execve() directly.
import _json
import _signal
import _thread
import errno
import os
import select
import stat
import sys
import time

WS = "/workspace"  # the workspace (set by main() from MODE)
CONTAINED = True  # False in `local` mode: kill process groups only, no cgroup counters
GRACE = 0.1  # seconds to keep reading pipes held open by background processes after a step exits
MAX_POLL_MS = 3600 * 1000  # poll() takes a C int: longer waits are done in several polls
READ_CHUNK = 65536

_out_lock = _thread.allocate_lock()

# A small JSON codec over the C helpers in `_json`: importing the `json` package (and with it
# `re`, `enum`, ...) would cost more than the rest of the supervisor's start-up.
_WS = " \t\r\n"


def _value(s, i):
    while s[i] in _WS:
        i += 1
    c = s[i]
    if c == '"':
        return _json.scanstring(s, i + 1, True)
    if c in "{[":
        # An object or an array: items up to the closing bracket, after commas; an object's
        # items are `key: value`.
        is_obj = c == "{"
        close = "}" if is_obj else "]"
        items = {} if is_obj else []
        i += 1
        while True:
            while s[i] in _WS:
                i += 1
            if s[i] == close:
                return items, i + 1
            if s[i] == ",":
                i += 1
                continue
            v, i = _value(s, i)
            if not is_obj:
                items.append(v)
                continue
            while s[i] in _WS:
                i += 1
            if s[i] != ":":
                raise ValueError("expected ':' at %d" % i)
            items[v], i = _value(s, i + 1)
    for word, val in (("true", True), ("false", False), ("null", None)):
        if s.startswith(word, i):
            return val, i + len(word)
    j = i
    while j < len(s) and s[j] in "+-0123456789.eE":
        j += 1
    if j == i:
        raise ValueError("unexpected %r at %d" % (c, i))
    num = s[i:j]
    return (float(num) if any(ch in num for ch in ".eE") else int(num)), j


def loads(data):
    value, _ = _value(data.decode("utf-8") + " ", 0)
    return value


def dumps(obj):
    if isinstance(obj, str):
        return _json.encode_basestring_ascii(obj)
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if obj is None:
        return "null"
    if isinstance(obj, (int, float)):
        return repr(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(dumps(str(k)) + ":" + dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    return dumps(str(obj))


def send(hdr, body=b""):
    if body:
        hdr["n"] = len(body)
    head = dumps(hdr).encode() + b"\n"
    with _out_lock:
        if not body:
            _write_all(memoryview(head))
            return
        # Header and body in one writev(): a tunnel chunk or a step's output is not copied.
        written = os.writev(1, (head, body))
        if written < len(head):
            _write_all(memoryview(head)[written:])
            written = len(head)
        _write_all(memoryview(body)[written - len(head):])


def _write_all(view):
    while view:
        view = view[os.write(1, view):]


def log(msg):
    try:
        os.write(2, ("supervisor: %s\n" % msg).encode(errors="replace"))
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Killing everything
# ---------------------------------------------------------------------------------------------


def processes():
    """(pid, fields) of every process: the fields of /proc/PID/stat after the command name
    (state, ppid, pgrp, ...)."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                st = f.read()
        except OSError:
            continue
        yield int(name), st[st.rindex(b")") + 2:].split()


def others_alive(me, spared=None):
    for pid, fields in processes():
        if pid == 1 or pid == me or (spared and pid in spared):
            continue
        if fields[0] not in (b"Z", b"X"):
            return True
    return False


def group_alive(pgid):
    """Whether a process of group `pgid` is alive (zombies do not count)."""
    for _, fields in processes():
        if fields[0] not in (b"Z", b"X") and int(fields[2]) == pgid:
            return True
    return False


def kill_group(pgid):
    """SIGKILLs a process group until none of it is left (local mode)."""
    for _ in range(500):
        try:
            os.killpg(pgid, _signal.SIGKILL)
        except ProcessLookupError:
            return True
        except OSError:
            return False
        if not group_alive(pgid):
            return True
        time.sleep(0.002)
    log("processes of group %d survived SIGKILL" % pgid)
    return False


def kill_all(pgid=None, spare_services=True):
    """SIGKILLs the step's group and then every process but PID 1, us and (unless
    `spare_services` is false) the services' process trees, until none is left. In local mode,
    only the step's group."""
    if not CONTAINED:
        return kill_group(pgid) if pgid else True
    if pgid:
        try:
            os.killpg(pgid, _signal.SIGKILL)
        except OSError:
            pass
    me = os.getpid()
    for _ in range(500):
        spared = None
        with _services_lock:  # no service starts between the census and the kill
            if spare_services and _services:
                spared = service_trees(set(_services))
                kill_unspared(me, spared)
        if spared is None:
            try:
                os.kill(-1, _signal.SIGKILL)  # never signals the caller or PID 1
            except OSError:
                pass
        if not others_alive(me, spared):
            return True
        time.sleep(0.002)
    log("processes survived SIGKILL")
    return False


def oom_count():
    if not CONTAINED:
        return None
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        try:
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) == 2 and parts[0] == "oom_kill":
                        return int(parts[1])
        except (OSError, ValueError):
            continue
    return None


# ---------------------------------------------------------------------------------------------
# Steps
# ---------------------------------------------------------------------------------------------

_steps = {}
_steps_lock = _thread.allocate_lock()


class Step:
    def __init__(self, rid, req):
        self.rid = rid
        self.req = req
        self.reason = None
        self.pgid = None
        self.lock = _thread.allocate_lock()

    def kill(self, reason):
        with self.lock:
            if self.reason is None:
                self.reason = reason
            pgid = self.pgid
        kill_all(pgid)


_DEFAULT_SIGNALS = tuple(
    getattr(_signal, n) for n in ("SIGPIPE", "SIGXFSZ", "SIGXFZ") if hasattr(_signal, n)
)
_in_ws = False  # set by main() once our cwd is the workspace
_reaped = {}  # pid -> exit code, for a child reaped by a poll before its final wait


def exec_paths(name, env):
    """Where to look for the program `name`: itself when it has a slash, else along PATH."""
    if "/" in name:
        return (os.fsencode(name),)
    # os.get_exec_path() would import `warnings` on the first step.
    dirs = (env.get("PATH") or os.defpath).split(os.pathsep)
    return tuple(os.fsencode(os.path.join(d or ".", name)) for d in dirs)


def spawn_first(paths, argb, envb, actions):
    """posix_spawn()s the first of `paths` that exists, in a session of its own; returns its pid
    or raises the most telling OSError."""
    err = errno.ENOENT
    for path in paths:
        if len(paths) > 1:  # a PATH search: a failed spawn costs a clone(), a stat() does not
            try:
                os.stat(path)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR) or err == errno.ENOENT:
                    err = e.errno or errno.EINVAL
                continue
        try:
            return os.posix_spawn(
                path, argb, envb, file_actions=actions, setsid=True, setsigdef=_DEFAULT_SIGNALS
            )
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR) or err == errno.ENOENT:
                err = e.errno or errno.EINVAL
    raise OSError(err, os.strerror(err))


def start_process(argv, cwd, env):
    """Forks and execs `argv` in its own session, in `cwd`, with `env`, stdin from /dev/null and
    stdout/stderr to new pipes; returns (pid, stdout_fd, stderr_fd). An exec (or chdir) failure is
    raised here as the child's OSError, reported over a close-on-exec status pipe. The child
    inherits only fds 0, 1 and 2."""
    if not argv:
        raise FileNotFoundError(errno.ENOENT, "empty command")
    paths = exec_paths(argv[0], env)
    argb = [os.fsencode(a) for a in argv]
    envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
    here = same_interpreter(argv, paths)
    code = compiled(argv[4]) if here else None
    if not here and _in_ws and cwd == WS and hasattr(os, "posix_spawn"):
        return _spawn(paths, argb, envb)
    cwdb = os.fsencode(cwd)
    fds = []
    try:
        out_r, out_w = os.pipe()  # close-on-exec (PEP 446)
        fds += (out_r, out_w)
        err_r, err_w = os.pipe()
        fds += (err_r, err_w)
        st_r, st_w = os.pipe()
        fds += (st_r, st_w)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        fds.append(null)
        pid = os.fork()
        if pid == 0:
            if here:
                _child_here(argv, code, env, cwdb, null, out_w, err_w, st_w)
            _child(paths, argb, envb, cwdb, null, out_w, err_w, st_w)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    for fd in (out_w, err_w, st_w, null):
        os.close(fd)
    try:
        report = b""
        while True:
            data = os.read(st_r, 64)
            if not data:
                break
            report += data
    finally:
        os.close(st_r)
    if report:
        os.close(out_r)
        os.close(err_r)
        os.waitpid(pid, 0)
        try:
            err = int(report)
        except ValueError:
            err = errno.EINVAL
        raise OSError(err, os.strerror(err))
    return pid, out_r, err_r


def _spawn(paths, argb, envb):
    """start_process() in the workspace (our own cwd) with posix_spawn (vfork-like: a Python
    fork() costs about a millisecond more per step). The step's oom_score_adj is written right
    after the spawn, before it can have allocated much."""
    out_r, out_w = os.pipe()  # close-on-exec (PEP 446), as is every fd we open
    try:
        err_r, err_w = os.pipe()
    except BaseException:
        os.close(out_r)
        os.close(out_w)
        raise
    actions = [
        (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
        (os.POSIX_SPAWN_DUP2, out_w, 1),
        (os.POSIX_SPAWN_DUP2, err_w, 2),
    ]
    try:
        pid = spawn_first(paths, argb, envb, actions)
    except BaseException:
        os.close(out_r)
        os.close(err_r)
        raise
    finally:
        os.close(out_w)
        os.close(err_w)
    try:  # the step, not the supervisor, is the one the OOM killer should pick
        f = os.open("/proc/%d/oom_score_adj" % pid, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(f, b"1000")
        finally:
            os.close(f)
    except OSError:
        pass
    return pid, out_r, err_r


def same_interpreter(argv, paths):
    """Whether `argv` runs this very interpreter the way the supervisor itself runs:
    `python3 -I -S -c CODE ...`, with `python3` (the first of `paths` that exists) being our
    own executable. Such a step is forked from the supervisor and runs CODE at once, without the
    10-40 ms of an interpreter's start-up (a stateful Python step's client is one)."""
    if len(argv) < 5 or argv[1:4] != ["-I", "-S", "-c"]:
        return False
    if not (sys.flags.isolated and sys.flags.no_site and sys.executable):
        return False
    for path in paths:
        if path in _same:
            return _same[path]
        try:
            os.stat(path)
        except OSError:
            continue
        try:
            _same[path] = os.path.realpath(path) == os.path.realpath(os.fsencode(sys.executable))
        except (OSError, ValueError):
            _same[path] = False
        return _same[path]
    return False


_same = {}  # an executable's path -> whether it is this interpreter
_codes = {}  # source -> code object, for `python3 -I -S -c` steps run in a fork


def compiled(source):
    """`source` compiled as `python3 -c` would (cached: compiling a stateful step's client takes
    a few ms, more than forking), or None when it does not compile (the child then raises the
    error as Python would)."""
    code = _codes.get(source)
    if code is None:
        try:
            code = compile(source, "<string>", "exec")
        except BaseException:
            return None
        if len(_codes) >= 8:
            _codes.clear()
        _codes[source] = code
    return code


def _setup_child(cwdb, null, out_w, err_w, st_w):
    """In a forked child: its own session, default signals, the OOM killer's first choice, `cwd`,
    stdin from /dev/null, stdout/stderr to the pipes, no other fd but the status pipe."""
    os.setsid()
    for sig in _DEFAULT_SIGNALS:  # Python ignores SIGXFSZ; a step must not
        _signal.signal(sig, _signal.SIG_DFL)
    try:  # the step, not the supervisor, is the one the OOM killer should pick
        f = os.open("/proc/self/oom_score_adj", os.O_WRONLY)
        os.write(f, b"1000")
        os.close(f)
    except OSError:
        pass
    os.chdir(cwdb)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.closerange(3, st_w)  # everything but 0/1/2 and the (close-on-exec) status pipe
    os.closerange(st_w + 1, 1 << 20)


def _child_here(argv, code, env, cwdb, null, out_w, err_w, st_w):
    """In the forked child of a `python3 -I -S -c CODE ARGS...` step: runs CODE as that
    interpreter would (a new `__main__`, `sys.argv` = ["-c", ARGS...], the step's environment,
    fresh standard streams, the exit status of SystemExit or 1 after a traceback); `code` is
    CODE compiled (None: compile it here, to raise its error). Never returns."""
    status = 1
    try:
        _setup_child(cwdb, null, out_w, err_w, st_w)
        os.close(st_w)  # nothing to exec: the parent goes on at once
        for k in list(os.environ):
            if k not in env:
                del os.environ[k]
        os.environ.update(env)  # putenv too: what the code starts gets the step's environment
        main = type(sys)("__main__")
        main.__builtins__ = __builtins__
        sys.modules["__main__"] = main
        sys.argv = ["-c"] + list(argv[5:])
        sys.orig_argv = list(argv)
        sys.stdin = open(0, "r", closefd=False)
        sys.stdout = open(1, "w", closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False, errors="backslashreplace")
        try:
            exec(code if code is not None else compile(argv[4], "<string>", "exec"), main.__dict__)
            status = 0
        except SystemExit as e:
            if e.code is None:
                status = 0
            elif isinstance(e.code, int):
                status = e.code & 0xFF
            else:
                sys.stderr.write("%s\n" % (e.code,))
        except BaseException as e:
            tb = e.__traceback__
            tb = tb.tb_next if tb is not None else None  # our own frame is no business of the code's
            sys.excepthook(type(e), e.with_traceback(tb), tb)
        for f in (sys.stdout, sys.stderr):
            try:
                f.flush()
            except BaseException:
                pass
    except BaseException:
        pass
    os._exit(status)


def _child(paths, argb, envb, cwdb, null, out_w, err_w, st_w):
    """In the forked child: never returns. Only simple calls into C (no locks, no imports)."""
    err = errno.EINVAL
    try:
        _setup_child(cwdb, null, out_w, err_w, st_w)
        err = errno.ENOENT
        for path in paths:
            try:
                os.execve(path, argb, envb)
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENOTDIR) or err == errno.ENOENT:
                    err = e.errno or errno.EINVAL
    except OSError as e:
        err = e.errno or errno.EINVAL
    except BaseException:
        pass
    try:
        os.write(st_w, b"%d" % err)
    finally:
        os._exit(127)


def reap(pid, block, pidfd=None, deadline=float("inf")):
    """Returns the exit code of `pid` (negative signal number when killed by one), or None when
    it has not exited (by `deadline`, when blocking)."""
    if pid in _reaped:
        return _reaped[pid]
    if block and deadline != float("inf"):
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return reap(pid, False)
            if pidfd is not None:
                p = select.poll()
                p.register(pidfd, select.POLLIN)
                p.poll(min(MAX_POLL_MS, int(remaining * 1000) + 1))
                rc = reap(pid, False)
                if rc is not None:
                    return rc
            else:
                rc = reap(pid, False)
                if rc is not None:
                    return rc
                time.sleep(min(remaining, 0.05))
    while True:
        try:
            got, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except InterruptedError:
            continue
        except ChildProcessError:
            return _reaped.get(pid, 0)
        if got == 0:
            return None
        _reaped[pid] = rc = os.waitstatus_to_exitcode(status)
        return rc


def run_step(step):
    rid = step.rid
    try:
        _run_step(step)
    except Exception as e:  # never leave the host waiting
        log("step %s failed: %r" % (rid, e))
        send({"id": rid, "ev": "err", "kind": "backend", "msg": "supervisor: %r" % (e,)})
    finally:
        with _steps_lock:
            _steps.pop(rid, None)


def _run_step(step):
    rid = step.rid
    req = step.req
    argv = req["argv"]
    env = dict(os.environ)
    env.update(req.get("env") or {})
    timeout = req.get("timeout_ms", 300000) / 1000.0
    cap = req.get("max_output")
    oom_before = oom_count()
    t0 = time.monotonic()
    deadline = t0 + timeout
    try:
        rel = "/".join(split_rel(req.get("cwd") or ""))  # workspace-relative; "" is the root
        pid, out_r, err_r = start_process(argv, WS + "/" + rel if rel else WS, env)
    except (OSError, Refused) as e:
        if isinstance(e, Refused):
            e = OSError(errno.EINVAL, "working directory %s" % e)
        msg = ("cannot run %s: %s\n" % (argv[0] if argv else "?", e.strerror or e)).encode()
        send({"id": rid, "ev": "out", "s": 2}, msg)
        code = 127 if e.errno == errno.ENOENT else 126
        send({"id": rid, "ev": "exit", "code": code, "term": "exited"})
        return
    with step.lock:
        step.pgid = pid
        killed_early = step.reason is not None
    if killed_early:
        step.kill(step.reason)
    send({"id": rid, "ev": "started", "pid": pid})

    fds = {out_r: 1, err_r: 2}
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    pidfd = None
    try:
        pidfd = os.pidfd_open(pid)
        poller.register(pidfd, select.POLLIN)
    except (AttributeError, OSError):
        pidfd = None
    total = 0
    capped = False
    exited_at = None
    while fds:
        now = time.monotonic()
        if now >= deadline:
            step.kill("timed_out")
            deadline = float("inf")
        wait = deadline - now
        if exited_at is not None:
            wait = min(wait, exited_at + GRACE - now)
            if wait <= 0:
                break
        elif pidfd is None:
            wait = min(wait, 0.05)
        events = poller.poll(None if wait == float("inf") else min(MAX_POLL_MS, max(0, int(wait * 1000) + 1)))
        for fd, _ in events:
            if fd == pidfd:
                poller.unregister(pidfd)
                exited_at = time.monotonic()
                continue
            try:
                data = os.read(fd, READ_CHUNK)
            except OSError:
                data = b""
            if not data:
                poller.unregister(fd)
                del fds[fd]
                continue
            if capped:
                continue
            if cap is not None and total + len(data) > cap:
                data = data[: cap - total]
                total = cap
                capped = True
                if data:
                    send({"id": rid, "ev": "out", "s": fds[fd]}, data)
                step.kill("output_limit")
                continue
            total += len(data)
            send({"id": rid, "ev": "out", "s": fds[fd]}, data)
        if pidfd is None and exited_at is None and reap(pid, False) is not None:
            exited_at = time.monotonic()
    os.close(out_r)
    os.close(err_r)
    # The step closed its pipes but may still run: keep enforcing the timeout.
    while True:
        rc = reap(pid, True, pidfd, deadline)
        if rc is not None:
            break
        step.kill("timed_out")
        deadline = float("inf")
    if pidfd is not None:
        os.close(pidfd)
    _reaped.pop(pid, None)
    code = 128 - rc if rc < 0 else rc
    with step.lock:
        reason = step.reason
    term = reason or "exited"
    if reason is None and code != 0:
        oom_after = oom_count()
        if oom_before is not None and oom_after is not None and oom_after > oom_before:
            term = "oom"
    send({"id": rid, "ev": "exit", "code": code, "term": term, "bytes": total})


# ---------------------------------------------------------------------------------------------
# Files, confined to /workspace
# ---------------------------------------------------------------------------------------------


class Refused(Exception):
    pass


class NotFound(Exception):
    pass


class NotRegular(Exception):
    pass


class NotDirectory(Refused):
    """A component before the last one is not a directory (refused like any bad path, except
    when listing: then the directory asked for does not exist)."""


def split_rel(path):
    parts = []
    for comp in path.split("/"):
        if comp in ("", "."):
            continue
        if comp == "..":
            raise Refused("contains '..'")
        parts.append(comp)
    return parts


def inside(path):
    return path == WS or path.startswith(WS + "/")


def resolve(rel, create):
    """Returns (dir_fd, name): the opened parent directory of the last component, and its name.

    Every directory is opened with O_NOFOLLOW relative to the previous one; a symbolic link is
    followed only when it resolves inside the workspace.
    """
    parts = split_rel(rel)
    if not parts:
        raise Refused("names no file")
    hops = 0
    while True:
        fd = os.open(WS, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        cur = WS
        redo = False
        try:
            i = 0
            while i < len(parts):
                comp = parts[i]
                try:
                    st = os.lstat(comp, dir_fd=fd)
                except FileNotFoundError:
                    st = None
                if st is not None and stat.S_ISLNK(st.st_mode):
                    target = os.path.realpath(cur + "/" + comp)
                    if not inside(target):
                        raise Refused(
                            "goes through a symbolic link (%s) that points outside /workspace"
                            % "/".join(parts[: i + 1])
                        )
                    hops += 1
                    if hops > 40:
                        raise Refused("too many levels of symbolic links")
                    parts = split_rel(target[len(WS):]) + parts[i + 1:]
                    if not parts:
                        raise Refused("names the workspace itself")
                    redo = True
                    break
                if i == len(parts) - 1:
                    return fd, comp
                if st is None:
                    if not create:
                        raise NotFound()
                    try:
                        os.mkdir(comp, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass
                try:
                    nfd = os.open(
                        comp, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd
                    )
                except NotADirectoryError:
                    raise NotDirectory("%s is not a directory" % "/".join(parts[: i + 1]))
                os.close(fd)
                fd = nfd
                cur = cur + "/" + comp
                i += 1
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if not redo:
            raise NotFound()


def file_error(rid, e):
    if isinstance(e, Refused):
        send({"id": rid, "ev": "err", "kind": "path_refused", "msg": str(e)})
    elif isinstance(e, NotRegular):
        send({"id": rid, "ev": "err", "kind": "invalid", "msg": "not a regular file"})
    elif isinstance(e, (NotFound, FileNotFoundError)):
        send({"id": rid, "ev": "err", "kind": "not_found", "msg": "no such file"})
    elif isinstance(e, OSError) and e.errno == errno.ELOOP:
        send({"id": rid, "ev": "err", "kind": "path_refused", "msg": "is a symbolic link"})
    elif isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        send({"id": rid, "ev": "err", "kind": "too_large", "msg": "no space left: %s" % e.strerror})
    elif isinstance(e, OSError):
        send({"id": rid, "ev": "err", "kind": "invalid", "msg": e.strerror or str(e)})
    else:
        send({"id": rid, "ev": "err", "kind": "backend", "msg": "supervisor: %r" % (e,)})


def open_regular(name, flags, dir_fd, mode=0o644):
    """Opens the regular file `name` in `dir_fd`: never follows a link (ELOOP), never blocks on a
    FIFO or device a step left there (O_NONBLOCK, then NotRegular). O_NONBLOCK does nothing to
    regular files."""
    try:
        f = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.EISDIR):  # a FIFO without a reader; a directory
            raise NotRegular()
        raise
    try:
        if not stat.S_ISREG(os.fstat(f).st_mode):
            raise NotRegular()
    except BaseException:
        os.close(f)
        raise
    return f


def op_write(rid, req, body):
    try:
        fd, name = resolve(req["path"], create=True)
        try:
            f = open_regular(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, fd, req.get("mode", 0o644))
        finally:
            os.close(fd)
        try:
            view = memoryview(body)
            while view:
                view = view[os.write(f, view):]
        finally:
            os.close(f)
        send({"id": rid, "ev": "ok"})
    except Exception as e:
        file_error(rid, e)


def op_read(rid, req):
    try:
        fd, name = resolve(req["path"], create=False)
        try:
            f = open_regular(name, os.O_RDONLY, fd)
        finally:
            os.close(fd)
        try:
            st = os.fstat(f)
            limit = req.get("max", 16 << 20)
            if st.st_size > limit:
                send({"id": rid, "ev": "err", "kind": "too_large",
                      "msg": "file is %d bytes, more than %d" % (st.st_size, limit)})
                return
            chunks = []
            size = 0
            while True:
                data = os.read(f, 1 << 20)
                if not data:
                    break
                size += len(data)
                if size > limit:
                    send({"id": rid, "ev": "err", "kind": "too_large", "msg": "file grew past the limit"})
                    return
                chunks.append(data)
        finally:
            os.close(f)
        send({"id": rid, "ev": "data"}, b"".join(chunks))
    except Exception as e:
        file_error(rid, e)


def open_dir(rel):
    """Opens the workspace directory `rel` ("" is the workspace itself), confined as resolve()."""
    if not split_rel(rel):
        return os.open(WS, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, name = resolve(rel, create=False)
    except NotDirectory:
        raise NotFound()
    try:
        return os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
    except NotADirectoryError:
        raise NotFound()
    finally:
        os.close(fd)


def shown_name(rel):
    """`rel` as UTF-8 text (a name that is not UTF-8 gets replacement characters)."""
    try:
        rel.encode("utf-8")
        return rel
    except UnicodeEncodeError:
        return rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def listed_entries(it):
    """(name, "dir" | "file" | "other", size, (dev, ino)) of each entry of a directory scan,
    links not followed; an entry gone before it could be looked at is left out."""
    for e in it:
        try:
            st = e.stat(follow_symlinks=False)
        except OSError:
            continue
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "file" if stat.S_ISREG(st.st_mode) else "other"
        yield e.name, kind, st.st_size, (st.st_dev, st.st_ino)


def op_list(rid, req):
    """The regular files under a workspace directory, in the export's order (sorted, depth
    first), without reading them: {"files": [[path, size], ...] (the first `max`), "total": N},
    paths relative to that directory. Links are not followed (nor listed). A tree deeper than
    the file descriptors left is listed down to that depth (the rest is logged as skipped)."""
    try:
        top = open_dir(req["path"])
    except Exception as e:
        file_error(rid, e)
        return
    try:
        limit = req.get("max", 1000)
        files = []
        total = 0
        # Depth first, each directory opened from its parent's descriptor by name with
        # O_NOFOLLOW: no link is ever followed, even one put in place of a directory already
        # scanned. Open descriptors: one per level.
        frames = []

        def enter(fd, rel_root):
            nonlocal total
            with os.scandir(fd) as it:
                entries = sorted(listed_entries(it))
            subdirs = []
            for name, kind, size, identity in entries:
                rel = rel_root + "/" + name if rel_root else name
                if kind == "dir":
                    subdirs.append((name, rel, identity))
                elif kind == "file":
                    total += 1
                    if len(files) < limit:
                        files.append([shown_name(rel), size])
            frames.append((fd, iter(subdirs)))

        try:
            enter(top, "")
            while frames:
                fd, subdirs = frames[-1]
                nxt = next(subdirs, None)
                if nxt is None:
                    frames.pop()
                    if fd != top:
                        os.close(fd)
                    continue
                name, rel, identity = nxt
                try:
                    sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                                  dir_fd=fd)
                except OSError as e:
                    log("list: skipped %s: %s" % (rel, e.strerror))
                    continue
                try:
                    st = os.fstat(sub)
                    if (st.st_dev, st.st_ino) != identity:  # another directory since the scan
                        raise OSError(errno.ESTALE, "it changed while listed")
                    enter(sub, rel)
                except OSError as e:
                    os.close(sub)
                    log("list: skipped %s: %s" % (rel, e.strerror))
        finally:
            for fd, _ in frames:
                if fd != top:
                    os.close(fd)
        send({"id": rid, "ev": "data"}, dumps({"files": files, "total": total}).encode())
    except Exception as e:
        send({"id": rid, "ev": "err", "kind": "backend", "msg": "list failed: %r" % (e,)})
    finally:
        os.close(top)


class ChunkWriter:
    def __init__(self, rid):
        self.rid = rid

    def write(self, data):
        if data:
            send({"id": self.rid, "ev": "chunk"}, bytes(data))
        return len(data)


PRELOAD_DELAY = 0.25  # seconds after ready before tarfile is imported in the background


def preload_export():
    # Not at once: the import holds the GIL for tens of ms, and a sandbox's first step, run
    # right after ready (a cold job), waited for it (a `true` step: 16-20 ms instead of 3-5 ms,
    # measured in the image at load 9). A job that ends sooner and wrote files imports it in
    # op_export instead; an empty workspace needs no tarfile.
    time.sleep(PRELOAD_DELAY)
    try:
        import tarfile  # noqa: F401
    except Exception:  # op_export reports it, if it happens again there
        pass


def op_export(rid):
    try:
        with os.scandir(WS) as it:
            empty = next(it, None) is None
    except OSError:
        empty = False
    if empty:
        # Nothing was written: the end-of-archive marker (two zero blocks) is the whole tar.
        send({"id": rid, "ev": "chunk"}, bytes(1024))
        send({"id": rid, "ev": "ok"})
        return
    import tarfile

    try:
        tar = tarfile.open(fileobj=ChunkWriter(rid), mode="w|", bufsize=1 << 18, format=tarfile.PAX_FORMAT)
        # An explicit stack, not os.walk: before Python 3.12 os.walk recurses, and a deep tree
        # (3,000 nested directories) raised RecursionError and lost the whole export.
        pending = [""]
        while pending:
            rel_root = pending.pop()
            root = WS + "/" + rel_root if rel_root else WS
            try:
                with os.scandir(root) as it:
                    entries = sorted((e.name, e.is_dir(follow_symlinks=False)) for e in it)
            except OSError as e:
                log("export: skipped %s: %s" % (rel_root or ".", e.strerror))
                continue
            subdirs = []
            for name, is_dir in entries:
                arc = rel_root + "/" + name if rel_root else name
                try:
                    tar.add(WS + "/" + arc, arcname=arc, recursive=False)
                except OSError as e:
                    log("export: skipped %s: %s" % (arc, e.strerror))
                    continue
                if is_dir:
                    subdirs.append(arc)
            pending.extend(reversed(subdirs))
        tar.close()
        send({"id": rid, "ev": "ok"})
    except Exception as e:
        send({"id": rid, "ev": "err", "kind": "backend", "msg": "export failed: %r" % (e,)})


# ---------------------------------------------------------------------------------------------
# Tunnels: byte streams to 127.0.0.1:PORT inside the sandbox, multiplexed on the link
# ---------------------------------------------------------------------------------------------
# host -> supervisor: {"op": "connect", "id": N, "port": P, "window": W} opens one; then, under
#   the same id: {"op": "data", "n": k} + k bytes (the host keeps at most W bytes uncredited),
#   {"op": "credit", "bytes": k} (the host has taken k bytes), {"op": "close"} (no more data:
#   the socket's write side is shut once everything before it is written), {"op": "abort"}.
# supervisor -> host: {"ev": "started"} once connected (else a final {"ev": "err", "kind":
#   "refused"}), {"ev": "chunk", "n": k} + k bytes (at most W bytes uncredited), {"ev": "credit",
#   "bytes": k} once k bytes reached the socket, {"ev": "eof"} when the service shut its side,
#   and a final {"ev": "ok"} (both directions done) or {"ev": "err"}.
# Each tunnel has its own two threads and windows, so a busy tunnel never stalls the main loop,
# a step's output or another tunnel, and nothing is buffered beyond the windows.

TUNNEL_CHUNK = 65536
_tunnels = {}
_tunnels_lock = _thread.allocate_lock()


class _Signal:
    """A wake-up flag for one waiting thread (the `_thread` module has locks only)."""

    def __init__(self):
        self._lock = _thread.allocate_lock()
        self._lock.acquire()

    def set(self):
        try:
            self._lock.release()
        except RuntimeError:  # already set
            pass

    def wait(self):
        self._lock.acquire()


class Tunnel:
    def __init__(self, rid, port, window):
        self.rid = rid
        self.port = port
        self.window = window
        self.sock = None
        self.nosignal = 0
        self.mu = _thread.allocate_lock()
        self.outq = []  # host -> service: bytes, or "close" / "abort"
        self.out_sig = _Signal()
        self.unacked = 0  # service -> host bytes not credited yet
        self.in_sig = _Signal()
        self.aborted = False
        self.error = None
        self.ended = 0  # directions finished (2: the tunnel is done)

    def put(self, item):
        with self.mu:
            self.outq.append(item)
        self.out_sig.set()

    def credit(self, n):
        with self.mu:
            self.unacked -= n
        self.in_sig.set()

    def abort(self):
        with self.mu:
            self.aborted = True
            sock = self.sock
        if sock is not None:
            try:
                sock.shutdown(2)  # SHUT_RDWR: wakes a blocked recv()
            except OSError:
                pass
        self.put("abort")
        self.in_sig.set()

    def fail(self, e):
        with self.mu:
            if self.error is None and not self.aborted:
                self.error = "port %d: %s" % (self.port, getattr(e, "strerror", None) or e)
        self.abort()

    def end(self):
        with self.mu:
            self.ended += 1
            last = self.ended == 2
            error = self.error
        if not last:
            return
        with _tunnels_lock:
            _tunnels.pop(self.rid, None)
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        if error:
            send({"id": self.rid, "ev": "err", "kind": "backend", "msg": error})
        else:
            send({"id": self.rid, "ev": "ok"})


def tunnel_open(t):
    import _socket  # only when a tunnel is opened: not part of the start-up cost

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        sock.settimeout(10)
        sock.connect(("127.0.0.1", t.port))
        sock.settimeout(None)
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    except OSError as e:
        sock.close()
        with _tunnels_lock:
            _tunnels.pop(t.rid, None)
        if e.errno == errno.ECONNREFUSED:
            msg = "nothing listens on 127.0.0.1:%d in the sandbox" % t.port
        else:
            msg = "cannot connect to 127.0.0.1:%d: %s" % (t.port, e.strerror or e)
        send({"id": t.rid, "ev": "err", "kind": "refused", "msg": msg})
        return
    with t.mu:
        t.sock = sock
        t.nosignal = _socket.MSG_NOSIGNAL
        aborted = t.aborted
    if aborted:
        t.ended = 1
        t.end()
        return
    send({"id": t.rid, "ev": "started"})
    try:
        _thread.start_new_thread(tunnel_writer, (t,))
    except RuntimeError:
        t.fail(OSError(errno.EAGAIN, "no threads left (pids limit reached)"))
        t.ended = 1
        t.end()
        return
    tunnel_reader(t)


def tunnel_reader(t):
    """Service -> host, at most `window` bytes ahead of the host's credits."""
    try:
        while True:
            with t.mu:
                room = t.window - t.unacked
                aborted = t.aborted
            if aborted:
                break
            if room <= 0:
                t.in_sig.wait()
                continue
            data = t.sock.recv(min(TUNNEL_CHUNK, room))
            if not data:
                with t.mu:
                    aborted = t.aborted
                if not aborted:
                    send({"id": t.rid, "ev": "eof"})
                break
            with t.mu:
                t.unacked += len(data)
            send({"id": t.rid, "ev": "chunk"}, data)
    except OSError as e:
        t.fail(e)
    finally:
        t.end()


def tunnel_writer(t):
    """Host -> service, crediting the host for what reached the socket."""
    try:
        while True:
            t.out_sig.wait()
            with t.mu:
                items, t.outq = t.outq, []
            for item in items:
                if item == "abort":
                    return
                if item == "close":
                    t.sock.shutdown(1)  # SHUT_WR
                    return
                t.sock.sendall(item, t.nosignal)  # EPIPE, not SIGPIPE (which would kill us)
                send({"id": t.rid, "ev": "credit", "bytes": len(item)})
    except OSError as e:
        t.fail(e)
    finally:
        t.end()


def op_connect(rid, req):
    port = req.get("port")
    window = req.get("window") or 262144
    if not isinstance(port, int) or not 0 < port < 65536 or not isinstance(window, int) or window < 1:
        send({"id": rid, "ev": "err", "kind": "invalid", "msg": "connect: bad port or window"})
        return
    t = Tunnel(rid, port, window)
    with _tunnels_lock:
        _tunnels[rid] = t
    spawn(rid, tunnel_open, t)


def op_tunnel(op, rid, req, body):
    """A data / credit / close / abort frame under an open tunnel's id."""
    with _tunnels_lock:
        t = _tunnels.get(rid)
    if t is None:
        return  # the tunnel ended meanwhile: late frames are dropped
    if op == "data":
        if body:
            t.put(body)
    elif op == "credit":
        t.credit(req.get("bytes") or 0)
    elif op == "close":
        t.put("close")
    else:
        t.abort()


# Handed-over tunnels: the same byte stream, but on a unix-socket connection of its own rather
# than multiplexed on the link (the link's framing and credits cost most of a busy tunnel's time).
# host -> supervisor: {"op": "handoff", "id": N, "port": P, "path": S, "key": K}: connect to the
#   unix socket S (one the host listens on, mounted read-only into the sandbox) and write K and a
#   newline there, then connect to 127.0.0.1:P, and copy bytes both ways until both directions
#   end.
# supervisor -> host: {"ev": "started"} once both are connected (else a final {"ev": "err"}:
#   "refused" when nothing listens on P, "backend" when S cannot be reached), then a final
#   {"ev": "ok"} once both directions are done. The kernel's socket buffers are the window.

HANDOFF_CHUNK = 262144


def op_handoff(rid, req):
    port, path, key = req.get("port"), req.get("path"), req.get("key")
    if (not isinstance(port, int) or not 0 < port < 65536 or not isinstance(path, str)
            or not path.startswith("/") or not isinstance(key, str) or not 0 < len(key) <= 128
            or "\n" in key):
        send({"id": rid, "ev": "err", "kind": "invalid", "msg": "handoff: bad port, path or key"})
        return
    spawn(rid, handoff_open, rid, port, path, key)


def handoff_open(rid, port, path, key):
    import _socket  # only when a tunnel is opened: not part of the start-up cost

    host = tcp = None
    try:
        # The host's socket first: when it cannot be reached, the service never sees a
        # connection that is dropped at once (the host then opens the tunnel another way).
        host = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        try:
            host.settimeout(10)
            host.connect(path)
            host.sendall(key.encode() + b"\n", _socket.MSG_NOSIGNAL)
            host.settimeout(None)
        except OSError as e:
            send({"id": rid, "ev": "err", "kind": "backend",
                  "msg": "cannot reach the host's tunnel socket: %s" % (e.strerror or e)})
            return
        tcp = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
        try:
            tcp.settimeout(10)
            tcp.connect(("127.0.0.1", port))
            tcp.settimeout(None)
            tcp.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
        except OSError as e:
            if e.errno == errno.ECONNREFUSED:
                msg = "nothing listens on 127.0.0.1:%d in the sandbox" % port
            else:
                msg = "cannot connect to 127.0.0.1:%d: %s" % (port, e.strerror or e)
            send({"id": rid, "ev": "err", "kind": "refused", "msg": msg})
            return
        send({"id": rid, "ev": "started"})
        done = _thread.allocate_lock()
        done.acquire()
        try:
            _thread.start_new_thread(handoff_copy, (host, tcp, _socket.MSG_NOSIGNAL, done, False))
        except RuntimeError:
            done.release()
            handoff_shut(tcp, host)
        handoff_copy(tcp, host, _socket.MSG_NOSIGNAL, None, True)
        done.acquire()
        send({"id": rid, "ev": "ok"})
    except Exception as e:  # no socket left (EMFILE), no thread: the host must still hear
        send({"id": rid, "ev": "err", "kind": "backend", "msg": "handoff failed: %r" % (e,)})
    finally:
        for s in (tcp, host):
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass


def handoff_copy(src, dst, nosignal, done, linger):
    """Copies src to dst until src's end of file (or a failed read: the same), then shuts dst's
    write side. When dst fails and `linger` (src is the service, dst the host, which went away),
    the service is closed as a client would close: an end of file sent, its remaining bytes read
    and dropped, so it sees an orderly close rather than a reset."""
    buf = bytearray(HANDOFF_CHUNK)
    view = memoryview(buf)
    try:
        while True:
            try:
                n = src.recv_into(buf)
            except OSError:
                n = 0
            if not n:
                dst.shutdown(1)  # SHUT_WR: the end of file, passed on
                break
            try:
                dst.sendall(view[:n], nosignal)  # EPIPE, not SIGPIPE (which would kill us)
            except OSError:
                if linger:
                    handoff_linger(src)
                else:
                    handoff_shut(src, dst)
                break
    except OSError:
        handoff_shut(src, dst)
    finally:
        if done is not None:
            done.release()


def handoff_shut(*socks):
    for s in socks:
        try:
            s.shutdown(2)
        except OSError:
            pass


def handoff_linger(sock, limit=5.0):
    deadline = time.monotonic() + limit
    try:
        sock.shutdown(1)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            if not sock.recv(HANDOFF_CHUNK):
                break
    except OSError:
        pass


# ---------------------------------------------------------------------------------------------
# Services: long-lived processes (a desktop, Jupyter Lab) started before the first step
# ---------------------------------------------------------------------------------------------
# host -> supervisor: {"op": "service", "id": N, "name": S, "argv": [...], "env": {...},
#   "ports": [P, ...], "timeout_ms": T} starts `argv` in a session of its own (cwd: the workspace, stdin
#   /dev/null, output appended to /tmp/agent-service-S.log), answers {"ev": "started", "pid": ...}
#   and then a final {"ev": "ok"} once 127.0.0.1:P accepts connections for every P, or {"ev":
#   "err", "kind":
#   "backend"} (with the tail of its log) when it exits first or does not listen within T ms.
#
# Killing a step spares the services' process trees: a process is spared when a service's
# leader is among its ancestors. A process a step started can never get there (orphans are
# re-parented to PID 1, never to a service), so a step cannot use this to escape a kill. The
# services end with the sandbox: the supervisor's shutdown kills everything.

_services = {}  # leader pid -> name
_services_lock = _thread.allocate_lock()


def service_trees(roots):
    """The pids of the process trees of the services whose leaders are `roots`."""
    parent = {pid: int(fields[1]) for pid, fields in processes()}
    spared = set(roots)
    for pid in parent:
        chain = []
        p = pid
        while p not in spared and p in parent and p > 1 and len(chain) < 100000:
            chain.append(p)
            p = parent[p]
        if p in spared:
            spared.update(chain)
    return spared


def kill_unspared(me, spared):
    """SIGKILLs every process but PID 1, us and `spared`."""
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        if pid == 1 or pid == me or pid in spared:
            continue
        try:
            os.kill(pid, _signal.SIGKILL)
        except OSError:
            pass


def service_log(name):
    return "/tmp/agent-service-%s-%d.log" % (name, os.getpid())


def log_tail(path, limit=2000):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return ""
    return data[-limit:].decode("utf-8", "replace").strip()


def listening(port):
    import _socket  # only when a service starts: not part of the start-up cost

    sock = _socket.socket(_socket.AF_INET, _socket.SOCK_STREAM)
    try:
        sock.settimeout(1)
        sock.connect(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def op_service(rid, req):
    name = req.get("name")
    argv = req.get("argv")
    ports = req.get("ports")
    if (not isinstance(name, str) or not name.isalnum() or not isinstance(argv, list) or not argv
            or not isinstance(ports, list) or not ports
            or not all(isinstance(p, int) and 0 < p < 65536 for p in ports)):
        send({"id": rid, "ev": "err", "kind": "invalid", "msg": "service: bad name, argv or ports"})
        return
    shown = ", ".join(str(p) for p in ports)
    env = dict(os.environ)
    env.update(req.get("env") or {})
    path = service_log(name)
    try:
        out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        try:
            actions = [
                (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, out, 1),
                (os.POSIX_SPAWN_DUP2, out, 2),
            ]
            envb = {os.fsencode(k): os.fsencode(v) for k, v in env.items()}
            argb = [os.fsencode(a) for a in argv]
            with _services_lock:  # registered before a step kill can see it unregistered
                pid = spawn_first(exec_paths(argv[0], env), argb, envb, actions)
                _services[pid] = name
        finally:
            os.close(out)
    except OSError as e:
        send({"id": rid, "ev": "err", "kind": "backend",
              "msg": "cannot start the %s service (%s): %s" % (name, argv[0], e.strerror or e)})
        return
    send({"id": rid, "ev": "started", "pid": pid})
    deadline = time.monotonic() + (req.get("timeout_ms") or 60000) / 1000.0
    problem = None
    while problem is None:
        rc = reap(pid, False)
        if rc is not None:
            problem = "exited with code %d before listening on port %s" % (rc, shown)
        elif all(listening(p) for p in ports):
            break
        elif time.monotonic() > deadline:
            problem = "did not listen on port %s in time" % shown
            try:
                os.killpg(pid, _signal.SIGKILL)
            except OSError:
                pass
        else:
            time.sleep(0.05)
    if problem is not None:
        with _services_lock:
            _services.pop(pid, None)
        reap(pid, True, None, time.monotonic() + 5)
        _reaped.pop(pid, None)
        tail = log_tail(path)
        send({"id": rid, "ev": "err", "kind": "backend",
              "msg": "the %s service %s%s" % (name, problem, (":\n" + tail) if tail else "")})
        return
    send({"id": rid, "ev": "ok"})
    rc = reap(pid, True)  # this thread watches the service until it ends
    with _services_lock:
        _services.pop(pid, None)
    _reaped.pop(pid, None)
    log("the %s service exited with code %s" % (name, rc))


def stop_services():
    """Local mode: kills the services' process groups."""
    with _services_lock:
        pids = list(_services)
    for pid in pids:
        kill_group(pid)


# ---------------------------------------------------------------------------------------------
# Main loop
# ---------------------------------------------------------------------------------------------


def spawn(rid, target, *args):
    try:
        _thread.start_new_thread(target, args)
    except RuntimeError:  # no thread left: the pids limit is exhausted
        with _steps_lock:
            _steps.pop(rid, None)
        send({"id": rid, "ev": "err", "kind": "backend",
              "msg": "the sandbox has no processes left (pids limit reached)"})


def configure(args):
    """Sets the mode and workspace from the command line; returns an error message or None."""
    global WS, CONTAINED
    if args == ["contained"]:
        if os.getpid() != 1 and os.getppid() != 1:
            return "refusing `contained` mode: neither this process nor its parent is PID 1"
        WS, CONTAINED = os.path.realpath("/workspace"), True
        return None
    if len(args) == 2 and args[0] == "local" and args[1]:
        WS, CONTAINED = os.path.realpath(args[1]), False
        return None
    return "usage: supervisor (contained | local WORKSPACE)"


def main(args):
    global _in_ws
    problem = configure(args)
    if problem:
        log(problem)
        os._exit(2)
    _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
    os.umask(0o022)
    try:
        os.chdir(WS)
        _in_ws = True
    except OSError:
        pass
    for name in os.listdir("/proc/self/fd"):  # steps inherit 0, 1 and 2 only
        if int(name) > 2:
            try:
                os.set_inheritable(int(name), False)
            except OSError:
                pass
    send({
        "ev": "ready",
        "pid": os.getpid(),
        "uid": os.getuid(),
        "python": "%d.%d" % sys.version_info[:2],
        "oom": oom_count() is not None,
    })
    # The export needs tarfile (with shutil, tens of ms to import): loaded in the background
    # shortly after ready (PRELOAD_DELAY), while a warm sandbox waits for its job, rather than
    # when the job's result is being packaged.
    try:
        _thread.start_new_thread(preload_export, ())
    except RuntimeError:
        pass
    inp = sys.stdin.buffer
    while True:
        line = inp.readline()
        if not line:
            break
        try:
            req = loads(line)
            if not isinstance(req, dict):
                raise ValueError("not an object")
        except (ValueError, IndexError, UnicodeDecodeError):
            log("bad header, closing")
            break
        n = req.get("n") or 0
        body = inp.read(n) if n else b""
        if len(body) != n:
            break
        op = req.get("op")
        rid = req.get("id")
        if op == "run":
            step = Step(rid, req)
            with _steps_lock:
                _steps[rid] = step
            spawn(rid, run_step, step)
        elif op == "kill":
            with _steps_lock:
                step = _steps.get(req.get("target"))
            if step is not None:
                step.kill(req.get("reason") or "cancelled")  # inline: works even without threads
        elif op == "write":
            spawn(rid, op_write, rid, req, body)
        elif op == "read":
            spawn(rid, op_read, rid, req)
        elif op == "export":
            spawn(rid, op_export, rid)
        elif op == "list":
            spawn(rid, op_list, rid, req)
        elif op == "ping":
            send({"id": rid, "ev": "ok"})
        elif op == "connect":
            op_connect(rid, req)
        elif op == "handoff":
            op_handoff(rid, req)
        elif op == "service":
            spawn(rid, op_service, rid, req)
        elif op in ("data", "credit", "close", "abort"):
            op_tunnel(op, rid, req, body)
        else:
            send({"id": rid, "ev": "err", "kind": "invalid", "msg": "unknown op %r" % (op,)})
    shutdown()
    os._exit(0)


def shutdown():
    """Kills everything before we exit (the host is gone)."""
    if CONTAINED:
        kill_all(spare_services=False)
        return
    stop_services()
    # Local mode: only the steps' groups, so wait (bounded) for steps still starting to have one.
    deadline = time.monotonic() + 5
    while True:
        with _steps_lock:
            steps = list(_steps.values())
        for step in steps:
            step.kill("cancelled")
        if all(s.pgid for s in steps) or time.monotonic() > deadline:
            return
        time.sleep(0.005)


if __name__ == "__main__":
    main(sys.argv[1:])
