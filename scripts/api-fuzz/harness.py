"""Fuzzes `kestrel vmm`'s API with Schemathesis against two contracts: Kestrel's own OpenAPI file
(docs/api.yaml) and Firecracker's API spec (v1.16.1), since Kestrel serves Firecracker's API.

Schemathesis speaks HTTP over TCP and the API listens on a Unix socket, so a relay in this process
forwards each TCP connection, byte for byte, to a connection of its own to the socket.

Each suite gets a fresh `kestrel vmm` (one suite's configuration requests must not change the next
one's answers) and ends with checks of the VMM itself: still running, still answering GET / over
its socket, never started a VM (the fuzzer knows no bootable kernel, so every InstanceStart must
have been refused), nothing panicked.

Usage: harness.py --kestrel PATH [--firecracker-spec PATH]   (scripts/api-fuzz/run runs it)
"""

import argparse
import copy
import http.client
import json
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
KESTREL_SPEC = HERE.parent.parent / "docs" / "api.yaml"
CONFIG = HERE / "schemathesis.toml"
# Far above a suite's usual run time (seconds here), low enough that a hang fails CI promptly.
SUITE_TIMEOUT_S = 300
STARTUP_TIMEOUT_S = 10


class UnixHTTPConnection(http.client.HTTPConnection):
    """An HTTP connection to a Unix socket."""

    def __init__(self, path: Path, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(str(self._path))


def api_request(path: Path, method: str, target: str) -> tuple[int, bytes]:
    connection = UnixHTTPConnection(path, timeout=5)
    try:
        connection.request(method, target)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class Relay:
    """Accepts TCP connections on 127.0.0.1 (a port the kernel picks, so parallel runs cannot clash)
    and forwards each one to a new connection to the Unix socket `target`, until `close`."""

    def __init__(self, target: Path):
        self._target = str(target)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._closed = False
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept, name="relay-accept")
        self._acceptor.start()

    def _accept(self):
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # close() shut the listener down
            thread = threading.Thread(target=self._serve, args=(client,), name="relay-connection")
            with self._lock:
                self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, client: socket.socket):
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        with self._lock:
            if self._closed:  # accepted just before close(), which has shut the others down
                client.close()
                upstream.close()
                return
            self._sockets |= {client, upstream}
        try:
            # A VMM that is gone refuses the connection; closing the client's shows it the same.
            upstream.connect(self._target)
            replies = threading.Thread(target=_pump, args=(upstream, client), name="relay-replies")
            replies.start()
            _pump(client, upstream)
            replies.join()
        except OSError:
            pass
        finally:
            with self._lock:
                self._sockets -= {client, upstream}
            client.close()
            upstream.close()

    def close(self):
        # shutdown() wakes a thread blocked in accept() or recv() on the socket; close() would not.
        self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join()
        with self._lock:
            self._closed = True
            for sock in self._sockets:
                _shutdown(sock, socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads:
            thread.join()


def _shutdown(sock: socket.socket, how: int):
    try:
        sock.shutdown(how)
    except OSError:
        pass  # already disconnected


def _pump(source: socket.socket, sink: socket.socket):
    """Copies `source` to `sink` until `source` ends, then ends `sink`'s direction (a half close, so
    a response still in flight the other way is delivered)."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _shutdown(sink, socket.SHUT_WR)


class Vmm:
    """`kestrel vmm --api-sock` in its own empty directory (relative paths the fuzzer sends land
    there), output kept in files."""

    def __init__(self, kestrel: Path, workdir: Path):
        self.socket = workdir / "api.sock"
        self.stderr_path = workdir / "kestrel.stderr"
        cwd = workdir / "cwd"
        cwd.mkdir()
        with open(workdir / "kestrel.stdout", "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(
                [str(kestrel), "vmm", "--api-sock", str(self.socket)],
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while not self._answers():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"kestrel vmm did not start serving: {self.stderr()}")
            time.sleep(0.01)

    def _answers(self) -> bool:
        try:
            return api_request(self.socket, "GET", "/")[0] == 200
        except OSError:
            return False

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def problems(self) -> list[str]:
        """What is wrong with the VMM after a suite, if anything."""
        if self.process.poll() is not None:
            return [f"kestrel vmm exited with status {self.process.returncode}: {self.stderr()}"]
        found = []
        try:
            status, body = api_request(self.socket, "GET", "/")
            if status != 200:
                found.append(f"GET / answered {status}: {body!r}")
            elif (state := json.loads(body).get("state")) != "Not started":
                found.append(f"GET / reports the state {state!r}: a VM was started")
        except (OSError, ValueError) as e:
            found.append(f"GET / failed: {e!r}")
        if "panicked" in self.stderr():
            found.append(f"a thread panicked: {self.stderr()}")
        return found

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def firecracker_contract(firecracker: dict, kestrel: dict) -> dict:
    """Firecracker's spec, changed where it does not describe what a compatible server answers:

    - vcpu_count has Kestrel's range (docs/api.yaml, x-kestrel: 1 to 254, not 1 to 32), so that
      GET /machine-config after a PUT of 64 vCPUs is no schema violation, and 64 no invalid input;
    - PATCH /machine-config takes a partial body, as its description and Firecracker's server say
      (the spec points it at MachineConfiguration, required fields included);
    - an optional field docs/api.yaml marks nullable may be null: Firecracker's server reads it as
      absent too (serde's Option), which its spec does not say.
    """
    spec = copy.deepcopy(firecracker)
    definitions = spec["definitions"]
    ours = kestrel["components"]["schemas"]

    vcpu_count = definitions["MachineConfiguration"]["properties"]["vcpu_count"]
    vcpu_count["maximum"] = ours["MachineConfiguration"]["properties"]["vcpu_count"]["maximum"]

    (body,) = [p for p in spec["paths"]["/machine-config"]["patch"]["parameters"] if p["in"] == "body"]
    partial = copy.deepcopy(definitions["MachineConfiguration"])
    del partial["required"]
    body["schema"] = partial

    for name, schema in ours.items():
        for field, field_schema in schema.get("properties", {}).items():
            theirs = definitions.get(name, {}).get("properties", {}).get(field)
            if field_schema.get("nullable") and theirs is not None:
                # Wrapped: Swagger 2.0 ignores keywords beside a $ref, and an enum would have to
                # list null for a null to be valid.
                definitions[name]["properties"][field] = {"allOf": [theirs], "x-nullable": True}
    return spec


def run_suite(name: str, spec: Path, kestrel: Path, workdir: Path) -> bool:
    print(f"== API fuzzing: {name} ({spec.name})", flush=True)
    workdir.mkdir()
    vmm = Vmm(kestrel, workdir)
    relay = Relay(vmm.socket)
    try:
        command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", str(spec)]
        command += ["--url", f"http://127.0.0.1:{relay.port}"]
        try:
            # Its working directory takes Hypothesis' and Schemathesis' scratch files.
            passed = subprocess.run(command, cwd=workdir, timeout=SUITE_TIMEOUT_S).returncode == 0
        except subprocess.TimeoutExpired:
            print(f"error: {name}: Schemathesis did not finish within {SUITE_TIMEOUT_S} s", flush=True)
            passed = False
        problems = vmm.problems()
    finally:
        relay.close()
        vmm.stop()
    for problem in problems:
        print(f"error: {name}: {problem}", flush=True)
    return passed and not problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kestrel", type=Path, required=True, help="the kestrel binary")
    parser.add_argument("--firecracker-spec", type=Path, help="Firecracker's swagger YAML (no suite without)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="kestrel-api-fuzz-") as tmp:
        tmp = Path(tmp)
        suites = [("kestrel", KESTREL_SPEC)]
        if args.firecracker_spec is not None:
            firecracker = yaml.safe_load(args.firecracker_spec.read_text())
            contract = firecracker_contract(firecracker, yaml.safe_load(KESTREL_SPEC.read_text()))
            contract_path = tmp / "firecracker-as-kestrel-serves-it.json"
            contract_path.write_text(json.dumps(contract, indent=1))
            suites.append(("firecracker", contract_path))
        results = {name: run_suite(name, spec, args.kestrel.resolve(), tmp / name) for name, spec in suites}
    failed = [name for name, passed in results.items() if not passed]
    if failed:
        print(f"API fuzzing failed: {', '.join(failed)}", flush=True)
        return 1
    print(f"API fuzzing passed: {', '.join(results)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
