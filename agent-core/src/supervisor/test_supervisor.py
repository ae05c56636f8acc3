# Focused tests of the supervisor's own code: its JSON codec, path confinement and protocol
# handling. Run by agent-core/tests/supervisor.rs (`cargo test`), or directly:
#   python3 -m unittest discover -s agent-core/src/supervisor -p 'test_*.py'
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "supervisor.py")

spec = importlib.util.spec_from_file_location("supervisor", SOURCE)
sup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(sup)  # defines everything; main() runs only as __main__


def alive(pid):
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            st = f.read()
    except OSError:
        return False
    return st[st.rindex(b")") + 2:][:1] not in (b"Z", b"X")


class Codec(unittest.TestCase):
    def test_loads_matches_the_json_module(self):
        for doc in [
            '{"id": 1, "op": "run", "argv": ["bash", "-c", "echo \\"hi\\"\\n"]}',
            '{"a": {"b": [1, -2, 3.5, 1e3, true, false, null]}, "c": ""}',
            '{"env": {"K\\u00e9": "v\\u2603\\ud83d\\ude00", "tab": "\\t"}}',
            ' { "spaced" : [ ] , "x" : { } } ',
            "[]",
            '"just a string"',
        ]:
            self.assertEqual(sup.loads(doc.encode()), json.loads(doc), doc)

    def test_loads_refuses_garbage(self):
        for bad in [b"not json", b"{\"a\" 1}", b"{\"a\": ", b"\xff\xfe"]:
            with self.assertRaises((ValueError, IndexError, UnicodeDecodeError), msg=bad):
                sup.loads(bad)

    def test_dumps_round_trips(self):
        for value in [
            {"id": 3, "ev": "out", "s": 1, "n": 5},
            {"msg": 'quote " backslash \\ newline \n nul \x00 snow \u2603 emoji \U0001F600'},
            {"list": [1, 2.5, None, True, False, "x"], "nested": {"k": []}},
        ]:
            text = sup.dumps(value)
            self.assertNotIn("\n", text, "a header must stay on one line")
            self.assertEqual(json.loads(text), value)


class Paths(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        root = os.path.realpath(self.tmp.name)
        self.ws = os.path.join(root, "ws")
        self.outside = os.path.join(root, "outside")
        os.mkdir(self.ws)
        os.mkdir(self.outside)
        self.saved = sup.WS
        sup.WS = self.ws

    def tearDown(self):
        sup.WS = self.saved
        self.tmp.cleanup()

    def test_split_rel_refuses_dotdot_and_drops_dots(self):
        self.assertEqual(sup.split_rel("a/./b//c"), ["a", "b", "c"])
        with self.assertRaises(sup.Refused):
            sup.split_rel("a/../../etc/passwd")

    def test_resolve_creates_parents_only_when_asked(self):
        with self.assertRaises(sup.NotFound):
            sup.resolve("x/y/z.txt", create=False)
        fd, name = sup.resolve("x/y/z.txt", create=True)
        os.close(fd)
        self.assertEqual(name, "z.txt")
        self.assertTrue(os.path.isdir(os.path.join(self.ws, "x", "y")))

    def test_links_pointing_out_are_refused_links_inside_followed(self):
        os.symlink(self.outside, os.path.join(self.ws, "out"))
        os.symlink("/", os.path.join(self.ws, "root"))
        os.mkdir(os.path.join(self.ws, "real"))
        os.symlink("real", os.path.join(self.ws, "in"))
        for path in ["out/x", "root/etc/passwd"]:
            with self.assertRaises(sup.Refused, msg=path):
                fd, _ = sup.resolve(path, create=True)
                os.close(fd)
        self.assertEqual(os.listdir(self.outside), [])
        fd, name = sup.resolve("in/sub/file", create=True)
        os.close(fd)
        self.assertTrue(os.path.isdir(os.path.join(self.ws, "real", "sub")))

    def test_a_link_as_last_component_is_never_opened(self):
        secret = os.path.join(self.outside, "secret")
        with open(secret, "w") as f:
            f.write("s")
        os.symlink(secret, os.path.join(self.ws, "leak"))
        with self.assertRaises(sup.Refused):
            fd, _ = sup.resolve("leak", create=False)
            os.close(fd)

    def test_fifos_are_refused_not_waited_on(self):
        os.mkfifo(os.path.join(self.ws, "pipe"))
        fd, name = sup.resolve("pipe", create=False)
        try:
            with self.assertRaises(sup.NotRegular):
                sup.open_regular(name, os.O_RDONLY, fd)
            with self.assertRaises(sup.NotRegular):
                sup.open_regular(name, os.O_WRONLY, fd)
        finally:
            os.close(fd)


def read_source():
    with open(SOURCE) as f:
        return f.read()


class Modes(unittest.TestCase):
    def run_sup(self, *args, stdin=b""):
        return subprocess.run(
            [sys.executable, "-I", "-S", "-c", read_source(), *args],
            input=stdin, capture_output=True, timeout=60,
        )

    def test_contained_mode_refuses_to_run_on_a_host(self):
        # Our parent is this test, not PID 1: kill(-1) must never be possible here.
        r = self.run_sup("contained")
        self.assertEqual(r.returncode, 2, r)
        self.assertIn(b"refusing `contained` mode", r.stderr)
        self.assertEqual(r.stdout, b"", "nothing may be sent before the mode is accepted")

    def test_a_mode_is_required(self):
        for args in [(), ("local",), ("bogus",), ("local", "")]:
            r = self.run_sup(*args)
            self.assertEqual(r.returncode, 2, (args, r))
            self.assertIn(b"usage", r.stderr)


def remove_deep_tree(top):
    """Removes a tree too deep for shutil.rmtree, which recurses (coreutils' rm does not)."""
    subprocess.run(["rm", "-rf", "--", top], check=True)


class Session:
    """A `local` supervisor with its stdin kept open, read frame by frame."""

    def __init__(self, workspace):
        self.p = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", read_source(), "local", workspace],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )

    def send(self, wire):
        self.p.stdin.write(wire)
        self.p.stdin.flush()

    def frame(self):
        head = self.p.stdout.readline()
        if not head:
            return None
        hdr = json.loads(head)
        return hdr, self.p.stdout.read(hdr.get("n", 0))

    def answers(self, ids):
        """Reads frames until each of `ids` had its final frame: {id: (header, body)}."""
        got = {}
        while set(ids) - set(got):
            f = self.frame()
            if f is None:
                raise AssertionError("the supervisor ended before answering %r" % (set(ids) - set(got)))
            if f[0].get("ev") in ("ok", "data", "err", "exit"):
                got[f[0]["id"]] = f
        return got

    def close(self):
        self.p.stdin.close()
        rest = self.p.stdout.read()
        err = self.p.stderr.read()
        code = self.p.wait(timeout=60)
        self.p.stdout.close()
        self.p.stderr.close()
        return code, rest, err


class Protocol(unittest.TestCase):
    """Frames written to a `local` supervisor, and what it answers."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.s = Session(self.tmp.name)
        hdr, _ = self.s.frame()
        self.ready = hdr

    def tearDown(self):
        if self.s is not None:
            self.s.close()
        self.tmp.cleanup()

    def finish(self):
        out = self.s.close()
        self.s = None
        return out

    def test_ready_comes_first_and_ping_is_answered(self):
        self.assertEqual(self.ready["ev"], "ready")
        self.assertNotIn("id", self.ready)
        self.assertFalse(self.ready["oom"], "no cgroup counters in local mode")
        self.s.send(b'{"id": 1, "op": "ping"}\n')
        self.assertEqual(self.s.answers([1])[1][0], {"id": 1, "ev": "ok"})
        code, rest, _ = self.finish()
        self.assertEqual((code, rest), (0, b""))

    def test_bodies_may_hold_newlines_and_are_written_exactly(self):
        body = b"line1\n{\"op\": \"ping\"}\n\x00\xff"
        self.s.send(b'{"id": 5, "op": "write", "path": "d/f.bin", "n": %d}\n' % len(body) + body)
        self.assertEqual(self.s.answers([5])[5][0]["ev"], "ok")
        self.s.send(b'{"id": 6, "op": "read", "path": "d/f.bin", "max": 1000}\n')
        hdr, data = self.s.answers([6])[6]
        self.assertEqual((hdr["ev"], data), ("data", body))
        with open(os.path.join(self.tmp.name, "d", "f.bin"), "rb") as f:
            self.assertEqual(f.read(), body)

    def test_a_header_split_across_writes_is_one_frame(self):
        wire = b'{"id": 9, "op": "ping"}\n'
        for i in range(len(wire)):
            self.s.send(wire[i:i + 1])
        self.assertEqual(self.s.answers([9])[9][0]["ev"], "ok")

    def test_a_tree_deeper_than_the_recursion_limit_is_exported(self):
        depth = 1500  # beyond Python's recursion limit (1000)
        # On tmpfs where there is one: removing 1,500 nested directories takes seconds on ext4.
        shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
        with tempfile.TemporaryDirectory(dir=shm) as ws:
            session = Session(ws)
            try:
                session.frame()  # ready
                fd = os.open(ws, os.O_RDONLY)
                try:
                    for _ in range(depth):
                        os.mkdir("d", dir_fd=fd)
                        inner = os.open("d", os.O_RDONLY, dir_fd=fd)
                        os.close(fd)
                        fd = inner
                finally:
                    os.close(fd)
                with open(os.path.join(ws, "top.txt"), "w") as f:
                    f.write("top")
                session.send(b'{"id": 7, "op": "export"}\n')
                data = b""
                while True:
                    hdr, body = session.frame()
                    if hdr.get("id") == 7 and hdr["ev"] == "chunk":
                        data += body
                    elif hdr.get("id") == 7:
                        break
            finally:
                session.close()
                remove_deep_tree(os.path.join(ws, "d"))
        self.assertEqual(hdr["ev"], "ok", hdr)
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            names = tar.getnames()
        self.assertIn("top.txt", names)
        self.assertEqual(max(n.count("/") for n in names), depth - 1, "the whole chain is exported")

    def export(self):
        self.s.send(b'{"id": 8, "op": "export"}\n')
        data = b""
        while True:
            hdr, body = self.s.frame()
            if hdr.get("id") == 8 and hdr["ev"] == "chunk":
                data += body
            elif hdr.get("id") == 8:
                break
        self.assertEqual(hdr["ev"], "ok", hdr)
        import io
        import tarfile
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            return tar.getnames()

    def test_an_empty_workspace_exports_an_empty_tar_and_a_written_file_is_exported(self):
        self.assertEqual(self.export(), [])
        with open(os.path.join(self.tmp.name, "out.txt"), "w") as f:
            f.write("x")
        self.assertEqual(self.export(), ["out.txt"])

    def list(self, path, limit=1000, rid=40):
        self.s.send(b'{"id": %d, "op": "list", "path": "%s", "max": %d}\n' % (rid, path.encode(), limit))
        hdr, data = self.s.answers([rid])[rid]
        return hdr, (json.loads(data) if hdr["ev"] == "data" else None)

    def test_list_names_regular_files_and_their_sizes_without_reading_them(self):
        ws = self.tmp.name
        os.makedirs(os.path.join(ws, "d", "e"))
        for rel, size in (("b.txt", 3), ("d/a.bin", 0), ("d/e/z", 5)):
            with open(os.path.join(ws, rel), "wb") as f:
                f.write(b"x" * size)
        # A sparse file of 1 GiB: listed by its size, not read.
        with open(os.path.join(ws, "d", "big"), "wb") as f:
            f.truncate(1 << 30)
        os.symlink("/etc", os.path.join(ws, "out"))  # links are neither followed nor listed
        os.symlink("b.txt", os.path.join(ws, "d", "link"))
        os.mkfifo(os.path.join(ws, "d", "fifo"))
        hdr, got = self.list("")
        self.assertEqual(hdr["ev"], "data")
        self.assertEqual(got, {"files": [["b.txt", 3], ["d/a.bin", 0], ["d/big", 1 << 30], ["d/e/z", 5]],
                               "total": 4})
        # A subdirectory: paths relative to it; a limit keeps the first names and the total.
        self.assertEqual(self.list("d/", limit=1)[1], {"files": [["a.bin", 0]], "total": 3})
        self.assertEqual(self.list("./d/e")[1], {"files": [["z", 5]], "total": 1})

    def test_list_of_a_file_a_missing_directory_or_a_link_out_is_an_error(self):
        ws = self.tmp.name
        with open(os.path.join(ws, "f"), "w") as f:
            f.write("x")
        os.symlink("/etc", os.path.join(ws, "out"))
        os.mkdir(os.path.join(ws, "in"))
        os.symlink("in", os.path.join(ws, "alias"))
        self.assertEqual(self.list("f")[0]["kind"], "not_found")
        self.assertEqual(self.list("f/sub")[0]["kind"], "not_found")
        self.assertEqual(self.list("missing")[0]["kind"], "not_found")
        self.assertEqual(self.list("out")[0]["kind"], "path_refused")
        self.assertEqual(self.list("../x")[0]["kind"], "path_refused")
        # A link inside the workspace is followed, as for a read.
        self.assertEqual(self.list("alias")[1], {"files": [], "total": 0})

    def test_unknown_ops_and_refused_paths_are_errors_not_crashes(self):
        self.s.send(
            b'{"id": 1, "op": "teleport"}\n'
            b'{"id": 2, "op": "read", "path": "../etc/passwd", "max": 10}\n'
            b'{"id": 3, "op": "read", "path": "missing", "max": 10}\n'
            b'{"id": 4, "op": "write", "path": "big", "n": 3}\nabc'
        )
        got = self.s.answers([1, 2, 3, 4])
        self.s.send(b'{"id": 5, "op": "read", "path": "big", "max": 2}\n')
        got.update(self.s.answers([5]))
        answers = {i: h for i, (h, _) in got.items()}
        self.assertEqual((answers[1]["ev"], answers[1]["kind"]), ("err", "invalid"))
        self.assertEqual((answers[2]["ev"], answers[2]["kind"]), ("err", "path_refused"))
        self.assertEqual((answers[3]["ev"], answers[3]["kind"]), ("err", "not_found"))
        self.assertEqual(answers[4]["ev"], "ok")
        self.assertEqual((answers[5]["ev"], answers[5]["kind"]), ("err", "too_large"))

    def test_a_bad_header_ends_the_session(self):
        self.s.send(b'this is not json\n{"id": 2, "op": "ping"}\n')
        code, rest, err = self.finish()
        self.assertEqual((code, rest), (0, b""), "nothing is answered after a bad header")
        self.assertIn(b"bad header", err)

    def test_a_truncated_body_ends_the_session(self):
        self.s.send(b'{"id": 1, "op": "write", "path": "x", "n": 100}\nshort')
        code, rest, _ = self.finish()
        self.assertEqual((code, rest), (0, b""))
        self.assertFalse(os.path.exists(os.path.join(self.tmp.name, "x")))

    def test_run_reports_output_and_exit(self):
        self.s.send(
            b'{"id": 7, "op": "run", "argv": ["sh", "-c", "echo out; echo err >&2; exit 3"],'
            b' "cwd": "", "env": {"X": "1"}, "timeout_ms": 30000, "max_output": 1000}\n'
        )
        out = {1: b"", 2: b""}
        evs = []
        while True:
            f = self.s.frame()
            self.assertIsNotNone(f, "the supervisor ended before the step's exit")
            hdr, body = f
            evs.append(hdr["ev"])
            if hdr["ev"] == "out":
                out[hdr["s"]] += body
            if hdr["ev"] == "exit":
                self.assertEqual((hdr["code"], hdr["term"]), (3, "exited"))
                break
        self.assertEqual(evs[0], "started")
        self.assertEqual(out, {1: b"out\n", 2: b"err\n"})

    def run_step(self, rid, argv, env=None):
        """Runs `argv` as a step: (exit header, stdout, stderr)."""
        req = {"id": rid, "op": "run", "argv": argv, "cwd": "", "env": env or {},
               "timeout_ms": 30000, "max_output": 100000}
        self.s.send(json.dumps(req).encode() + b"\n")
        out = {1: b"", 2: b""}
        while True:
            f = self.s.frame()
            self.assertIsNotNone(f, "the supervisor ended before the step's exit")
            hdr, body = f
            if hdr.get("id") == rid and hdr["ev"] == "out":
                out[hdr["s"]] += body
            if hdr.get("id") == rid and hdr["ev"] in ("exit", "err"):
                return hdr, out[1], out[2]

    def test_python_with_the_supervisors_flags_runs_in_a_fork_like_a_new_interpreter(self):
        code = (
            "import os, sys\n"
            "print(sys.argv, os.environ['X'], os.getcwd() == os.path.realpath(sys.argv[1]))\n"
            "print(repr(sys.stdin.read()), __name__, 'run_step' in dir(__import__('__main__')))\n"
            "print('select' in sys.modules, sys.orig_argv[1:4], file=sys.stderr)\n"
            "sys.exit(5)\n"
        )
        hdr, out, err = self.run_step(
            1, [sys.executable, "-I", "-S", "-c", code, self.tmp.name], {"X": "from-env"}
        )
        self.assertEqual((hdr["ev"], hdr["code"], hdr["term"]), ("exit", 5, "exited"), err)
        self.assertEqual(
            out.decode().splitlines(),
            ["['-c', %r] from-env True" % self.tmp.name, "'' __main__ False"],
        )
        # Forked, not exec'd: the supervisor's modules are loaded (a new `python3 -I -S` has no
        # `select`), and the command line reads as the step's.
        self.assertEqual(err, b"True ['-I', '-S', '-c']\n")
        # An uncaught exception: its traceback (the code's frames only) and exit code 1.
        hdr, out, err = self.run_step(2, [sys.executable, "-I", "-S", "-c", "x = 1\nraise KeyError(x)"])
        self.assertEqual((hdr["code"], out), (1, b""))
        self.assertIn(b'File "<string>", line 2', err)
        self.assertTrue(err.endswith(b"KeyError: 1\n"), err)
        self.assertNotIn(b"_child_here", err)
        # Code that does not compile: Python's own message, exit code 1.
        hdr, out, err = self.run_step(4, [sys.executable, "-I", "-S", "-c", "x = (1,"])
        self.assertEqual((hdr["code"], out), (1, b""))
        self.assertIn(b"SyntaxError", err)
        # Other flags are a new interpreter, as always.
        hdr, out, _ = self.run_step(
            3, [sys.executable, "-I", "-c", "import sys; print(sys.flags.no_site, 'select' in sys.modules)"]
        )
        self.assertEqual((hdr["code"], out), (0, b"0 False\n"))

    def test_a_kill_names_its_target_and_stdin_eof_kills_the_rest(self):
        run = (b'{"id": %d, "op": "run", "argv": ["sh", "-c", "echo up; exec sleep 60"],'
               b' "cwd": "", "env": {}, "timeout_ms": 60000, "max_output": 1000}\n')
        self.s.send(run % 1 + run % 2)
        pids = {}
        up = set()
        while len(up) < 2:
            hdr, body = self.s.frame()
            if hdr["ev"] == "started":
                pids[hdr["id"]] = hdr["pid"]
            if hdr["ev"] == "out":
                up.add(hdr["id"])
        self.s.send(b'{"id": 3, "op": "kill", "target": 1, "reason": "cancelled"}\n')
        hdr, _ = self.s.answers([1])[1]
        self.assertEqual((hdr["term"], hdr["code"]), ("cancelled", 137))
        self.assertTrue(alive(pids[2]), "the other step still runs")
        code, _, _ = self.finish()
        self.assertEqual(code, 0)
        self.assertFalse(alive(pids[2]), "stdin closed: every step is killed")

if __name__ == "__main__":
    unittest.main()
