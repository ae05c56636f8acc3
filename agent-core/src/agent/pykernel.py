# Stateful Python for containerized-agent: one long-lived interpreter per sandbox (workspace).
#
# Run as `python3 -c <this file> CODE_FILE RESULT_FILE` in the workspace by a stateful `python`
# step (agent_core::agent::step documents the host side). This process is the step's *client*:
#
# 1. It connects to the sandbox's kernel, a daemon listening on an abstract Unix socket named
#    after the uid and the workspace; when there is none, it forks one (double fork, own session)
#    from itself and waits until it answers.
# 2. It hands the kernel its own stdout and stderr (SCM_RIGHTS) and the code's file name. The
#    kernel runs the code in its one namespace with fds 1 and 2 pointing at the client's, so output
#    streams as a normal step's would, subprocesses included.
# 3. The kernel answers one JSON line: ok, the repr of the value of a final expression, the error,
#    the files the code created or changed in the workspace and how many steps it has run. The
#    client writes it to RESULT_FILE and exits 0 (ok) or 1.
#
# The kernel ends with its client: when the client dies before the answer (its step timed out or
# was cancelled and its process group was killed), the kernel exits, so the next step starts a
# new interpreter and its answer says so (steps == 1). Code that ends the interpreter itself
# (os._exit, a crash) gives an answer with "lost": true from the client.
import os
import socket
import sys

MAX_VALUE = 8192  # bytes of a value's repr kept
MAX_FILES = 100  # changed files listed
MAX_SCAN = 20000  # workspace entries looked at per scan


def address():
    import zlib

    ws = os.getcwd().encode()
    return "\0agent-pykernel-%d-%08x-%d" % (os.getuid(), zlib.crc32(ws), len(ws))


def scan():
    """(path, mtime_ns, size) of regular files under the workspace, .agent/ excluded."""
    seen = {}
    stack = ["."]
    n = 0
    while stack and n < MAX_SCAN:
        d = stack.pop()
        try:
            entries = os.scandir(d)
        except OSError:
            continue
        with entries:
            for e in entries:
                n += 1
                rel = e.path[2:]
                try:
                    if e.is_dir(follow_symlinks=False):
                        if rel != ".agent":
                            stack.append(e.path)
                    elif e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        seen[rel] = (st.st_mtime_ns, st.st_size)
                except OSError:
                    pass
    return seen


def run(code_file, ns, state):
    import ast
    import traceback

    before = scan()
    answer = {"ok": True, "value": None, "error": None}
    try:
        with open(code_file, "rb") as f:
            src = f.read()
        tree = ast.parse(src, filename=code_file)
        last = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = ast.Expression(tree.body.pop().value)
        exec(compile(tree, code_file, "exec"), ns)
        if last is not None:
            value = eval(compile(last, code_file, "eval"), ns)
            if value is not None:
                text = repr(value)
                if len(text) > MAX_VALUE:
                    text = text[:MAX_VALUE] + "... (%d characters in all)" % len(text)
                answer["value"] = text
    except SystemExit as e:
        answer["ok"] = e.code in (None, 0)
        if not answer["ok"]:
            answer["error"] = "SystemExit: %r" % (e.code,)
    except BaseException as e:
        answer["ok"] = False
        tb = e.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename != code_file:
            tb = tb.tb_next  # the kernel's own frames are no business of the code's
        traceback.print_exception(type(e), e, tb)
        answer["error"] = "".join(traceback.format_exception_only(type(e), e)).strip()
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except Exception:
            pass
    after = scan()
    changed = sorted(p for p, v in after.items() if before.get(p) != v)
    answer["files"] = changed[:MAX_FILES]
    answer["files_truncated"] = len(changed) > MAX_FILES
    state["steps"] += 1
    answer["steps"] = state["steps"]
    return answer


def serve(listener):
    import _thread
    import json

    ns = {"__name__": "__main__", "__builtins__": __builtins__}
    state = {"steps": 0}
    null = os.open(os.devnull, os.O_RDWR)
    ws = os.getcwd()
    home = os.stat(ws)
    listener.settimeout(2)
    while True:
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            # Outside a container (tests), the workspace may be removed under us: end with it.
            try:
                now = os.stat(ws)
            except OSError:
                os._exit(0)
            if (now.st_dev, now.st_ino) != (home.st_dev, home.st_ino):
                os._exit(0)
            continue
        conn.settimeout(None)
        try:
            msg, fds, _, _ = socket.recv_fds(conn, 65536, 2)
        except OSError:
            conn.close()
            continue
        if len(fds) != 2 or not msg:
            for fd in fds:
                os.close(fd)
            conn.close()
            continue
        done = [False]

        def watch(c=conn, done=done):
            # The client died before the answer: end with it (its step was killed).
            try:
                while c.recv(1):
                    pass
            except OSError:
                pass
            if not done[0]:
                os._exit(137)

        _thread.start_new_thread(watch, ())
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        answer = run(msg.decode(), ns, state)
        os.dup2(null, 1)
        os.dup2(null, 2)
        done[0] = True
        try:
            conn.sendall(json.dumps(answer).encode() + b"\n")
        except OSError:
            pass
        conn.close()


def start_kernel(addr):
    """Forks a kernel daemon listening at `addr` (one that loses the race to bind just exits)."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.close(null)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(addr)
        listener.listen(8)
        os.environ.setdefault("MPLBACKEND", "Agg")
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        sys.argv = [""]
        serve(listener)
    except BaseException:
        pass
    os._exit(0)


def connect(addr):
    import time

    deadline = time.monotonic() + 30
    started = False
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(addr)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise
        if not started:
            start_kernel(addr)
            started = True
        else:
            time.sleep(0.005)


def main(code_file, result_file):
    import json

    sys.stdout.flush()
    conn = connect(address())
    socket.send_fds(conn, [os.path.abspath(code_file).encode()], [1, 2])
    data = b""
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    if data.endswith(b"\n"):
        answer = json.loads(data)
    else:
        answer = {
            "ok": False,
            "lost": True,
            "error": "the Python interpreter exited during this step; its state was lost",
        }
        sys.stderr.write(answer["error"] + "\n")
    with open(result_file, "w") as f:
        json.dump(answer, f)
    sys.exit(0 if answer.get("ok") else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
