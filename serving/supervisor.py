"""`serve` in the engines layout: start one engine per accelerator, restart any that dies, run the HTTP front
ends (uvicorn), and on SIGTERM drain the tree in order: front ends first (they stop accepting and finish their
requests, which the engines still answer), then the engines (which finish what they queued).

This process never touches CUDA: engines are fresh interpreters, each told its one GPU by CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from uvicorn.supervisors.multiprocess import SIGNALS, Multiprocess

from serving.board import RUN_DIR_ENV, SIM_DEVICE_ENV, STALE_S, STUCK_S, Board, EngineState
from serving.config import Settings
from serving.engine.main import LOAD_FAILED, SETTINGS_FILE
from serving.gpus import VISIBLE_ENV, Gpu
from serving.server import MULTIPROC_ENV

log = logging.getLogger(__name__)

RESTART_DELAYS_S = (0.5, 1, 2, 5, 10)  # after an engine dies; longer while it keeps dying soon after its start
STABLE_S = 60  # an engine that lived this long starts the delays from the beginning again
# Of the SIGTERM drain (graceful_timeout_s), what the engines keep for last: once the front ends have finished their
# requests the engines' queues are empty but for parts and stragglers, so a few seconds suffice.
ENGINE_DRAIN_S = 5
KEEP_ALIVE_S = 75  # as the workers layout's gunicorn: longer than the idle timeout of the load balancer in front
HTTP_PROTOCOL = "serving.frontend.protocol:BoundedHeadProtocol"  # uvicorn's httptools protocol, heads bounded


@dataclasses.dataclass
class EngineProcess:
    index: int
    env: dict[str, str]
    gpu: Gpu | None = None
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    restart_at: float = 0.0  # when a dead engine is due to start again (0: not waiting)
    quick_deaths: int = 0
    was_ready: bool = False  # a load failure after that (a GPU error in a restart's warm-up) is retried, a few times
    unhealthy_since: float = 0.0


class FrontEnds(Multiprocess):
    """uvicorn's process manager as `serve` runs it: it tells a stop by signal from front ends that could not start,
    kills a front end still running `kill_after_s` after the stop (its own graceful timeout is over by then: its
    event loop is stuck), and keeps one front end per core (no resizing by signal)."""

    def __init__(self, config: uvicorn.Config, sockets: list, kill_after_s: float) -> None:
        super().__init__(config, sockets)
        self.kill_after_s = kill_after_s
        self.signalled = False

    def handle_int(self) -> None:
        self.signalled = True
        super().handle_int()

    def handle_term(self) -> None:
        self.signalled = True
        super().handle_term()

    def handle_hup(self) -> None:
        log.info("SIGHUP ignored: the front ends are not restarted by signal")

    def handle_ttin(self) -> None:
        log.info("SIGTTIN ignored: one front end per core")

    def handle_ttou(self) -> None:
        log.info("SIGTTOU ignored: one front end per core")

    def run(self) -> None:
        try:
            super().run()
        except BaseException:  # the front ends it started must not outlive it, serving with no engines
            self.should_exit.set()
            self.terminate_all()
            self.join_all()
            raise

    def keep_subprocess_alive(self) -> None:
        self.handle_signals()  # a stop that came meanwhile first: pinging a stuck front end takes 5 s to fail
        if not self.should_exit.is_set():
            super().keep_subprocess_alive()

    def join_all(self) -> None:
        deadline = time.monotonic() + self.kill_after_s
        for front_end in self.processes:
            front_end.process.join(max(0.0, deadline - time.monotonic()))
            if front_end.process.is_alive():
                log.error("front end %s did not finish its requests in time; killed", front_end.pid)
                front_end.kill()
                front_end.process.join()


class Supervisor:
    def __init__(self, settings: Settings, model_dir: Path | None, gpus: list[Gpu]) -> None:
        """`model_dir` None: a multi-model endpoint (settings.multi_model), which starts with no model."""
        self.settings = settings
        self.model_dir = model_dir
        self.run_dir = Path(tempfile.mkdtemp(prefix="toxserve-run-"))  # 0700: the channel's sockets live here
        accelerators = settings.sim_devices if settings.backend == "sim" else max(1, len(gpus))
        self.frontends = settings.workers or (os.cpu_count() or 1)
        self.engines = [EngineProcess(i, self._engine_env(i, gpus), gpus[i] if gpus else None)
                        for i in range(accelerators)]
        self.board = Board.create(self.run_dir, accelerators)
        self._stopping = threading.Event()
        self._lock = threading.Lock()

    def _engine_env(self, index: int, gpus: list[Gpu]) -> dict[str, str]:
        env = {**os.environ, RUN_DIR_ENV: str(self.run_dir)}
        if gpus:
            env[VISIBLE_ENV] = gpus[index].visible_id
        elif self.settings.backend == "sim":
            env[SIM_DEVICE_ENV] = str(index)
        return env

    def run(self) -> int:
        settings = dataclasses.replace(self.settings, model_dir=str(self.model_dir) if self.model_dir else None,
                                       workers=self.frontends)
        (self.run_dir / SETTINGS_FILE).write_text(json.dumps(dataclasses.asdict(settings)))
        os.environ[RUN_DIR_ENV] = str(self.run_dir)
        for engine in self.engines:
            self._start(engine)
        threading.Thread(target=self._watch, name="engine-watch", daemon=True).start()
        try:
            stopped = self._serve_http()
        finally:
            self._stopping.set()
            self._stop_engines(ENGINE_DRAIN_S)
        if not stopped:
            log.error("the front ends could not start (their errors are above); stopping")
            return 1
        return 0

    def _serve_http(self) -> bool:
        """uvicorn's process manager runs the front ends (and starts again one that dies); it returns after a
        SIGTERM (or SIGINT) once they have stopped accepting and finished their requests (True), or when a front end
        could not start (False). Its signal handlers and listening socket go with it: while the engines drain,
        a connection is refused rather than left unanswered, and a second SIGTERM ends the process.

        uvicorn on uvloop with httptools reads requests and writes answers on the front end's own event loop;
        granian (Rust threads feeding the loop) cost a thread hand-off to start each request, another to read its
        body and another to send its answer, much of a request's latency at low load (BENCHMARKS.md).
        """
        s = self.settings
        gpus = sum(e.gpu is not None for e in self.engines)
        log.info("layout: %d front end(s) feeding %d engine(s), %s", self.frontends, len(self.engines),
                 f"one per GPU ({gpus})" if gpus else "simulated" if s.backend == "sim" else "on the CPU")
        # no lifespan events (the app has nothing to start or stop), no access log of uvicorn's (the app writes
        # its own, with request ids), no proxy-header rewriting (the app never reads the client's address)
        drain_s = max(1, s.graceful_timeout_s - ENGINE_DRAIN_S)  # the front ends' part of the SIGTERM drain
        config = uvicorn.Config("serving.frontend.asgi:create", factory=True, host=s.host, port=s.port,
                                workers=self.frontends, loop="uvloop", http=HTTP_PROTOCOL, ws="none", lifespan="off",
                                log_config=None, log_level=s.log_level.lower(), access_log=False, proxy_headers=False,
                                server_header=False, timeout_keep_alive=KEEP_ALIVE_S,
                                timeout_graceful_shutdown=drain_s)
        listening = config.bind_socket()
        handlers = {sig: signal.getsignal(sig) for sig in SIGNALS}
        front_ends = FrontEnds(config, [listening], kill_after_s=drain_s + 1)
        try:
            front_ends.run()
        finally:
            listening.close()
            for sig, handler in handlers.items():
                if handler is not None:  # None: not set from Python, nothing to give back
                    signal.signal(sig, handler)
        return front_ends.signalled

    def _start(self, engine: EngineProcess) -> None:
        device = "cpu" if engine.gpu is None else "cuda"
        command = [sys.executable, "-m", "serving.engine", str(self.run_dir), str(engine.index), device]
        engine.process = subprocess.Popen(command, env=engine.env)
        engine.started_at = time.monotonic()
        if engine.gpu is not None:
            log.info("engine %d (pid %d) pinned: %s=%s (%s)", engine.index, engine.process.pid, VISIBLE_ENV,
                     engine.gpu.visible_id, engine.gpu.name)
        else:
            log.info("engine %d (pid %d) started on %s", engine.index, engine.process.pid,
                     f"simulated accelerator {engine.index}" if self.settings.backend == "sim" else "the CPU")

    def _watch(self) -> None:
        """Every engine that exits while the server runs is marked dead on the board at once (its waiting requests
        get 503 from their front ends) and started again after a delay, unless it could not load the model."""
        while not self._stopping.wait(0.1):
            with self._lock:
                if self._stopping.is_set():
                    return
                for engine in self.engines:
                    if engine.process is not None and engine.process.poll() is None:
                        self._check_alive(engine, engine.process)
                    if engine.process is not None and engine.process.poll() is not None:
                        self._died(engine, engine.process)
                    elif engine.process is None and engine.restart_at and time.monotonic() >= engine.restart_at:
                        engine.restart_at = 0.0
                        self._start(engine)

    def _check_alive(self, engine: EngineProcess, process: subprocess.Popen) -> None:
        """A ready engine whose heartbeat has stopped (hung in a device call, stopped) is killed; a restart follows."""
        status = self.board.read(engine.index)
        if status.pid != process.pid or status.state != EngineState.READY:
            return
        engine.was_ready = True
        if status.serving:
            engine.unhealthy_since = 0.0
            return
        now = time.monotonic()
        if not engine.unhealthy_since:  # one reading may be torn mid-write: act on two, apart
            engine.unhealthy_since = now
            return
        if now - engine.unhealthy_since >= 0.5:
            log.error("engine %d (pid %d) is hung (no heartbeat for %.0f s, or a forward running over %.0f s); "
                      "killing it", engine.index, process.pid, STALE_S, STUCK_S)
            engine.unhealthy_since = 0.0
            process.kill()  # reaped by the next round of the watch

    def _died(self, engine: EngineProcess, process: subprocess.Popen) -> None:
        from prometheus_client import multiprocess

        if os.environ.get(MULTIPROC_ENV):
            multiprocess.mark_process_dead(process.pid)
        engine.process = None
        if process.returncode == LOAD_FAILED and (not engine.was_ready or engine.quick_deaths >= 3):
            log.error("engine %d could not load the model; /ping answers 503 with the reason", engine.index)
            return
        self.board.write(engine.index, state=EngineState.DEAD, queued_texts=0,
                         restarts=self.board.read(engine.index).restarts + 1)
        lived = time.monotonic() - engine.started_at
        engine.quick_deaths = 0 if lived > STABLE_S else engine.quick_deaths + 1
        delay = RESTART_DELAYS_S[min(engine.quick_deaths, len(RESTART_DELAYS_S) - 1)]
        engine.restart_at = time.monotonic() + delay
        log.error("engine %d (pid %d) exited with %s after %.1f s; restarting in %.1f s", engine.index, process.pid,
                  process.returncode, lived, delay)

    def _stop_engines(self, timeout_s: float) -> None:
        with self._lock:
            running = [e.process for e in self.engines if e.process is not None and e.process.poll() is None]
            for process in running:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        for process in running:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("engine pid %d did not drain in %d s; killed", process.pid, timeout_s)
                process.kill()
                process.wait()
