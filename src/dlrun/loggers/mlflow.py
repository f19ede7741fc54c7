"""logger=mlflow: each run an MLflow run (params, metrics, tags, artifacts); a sweep a parent run, a child per job.

By default every run of a project goes to one SQLite store beside the runs (outputs/mlflow.db, artifacts in
outputs/mlflow-artifacts/); `logger.mlflow.tracking_uri` names another store or a running server (http://...).
Values are kept in memory and sent at each checkpoint (and at the end): a server that goes away does not stop the
training, and what it missed is sent when it answers again or reported at the end.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

from dlrun.errors import ConfigError
from dlrun.logger import LOGGERS
from dlrun.views import console

INSTALL = 'pip install "mlflow>=3.7"  (or, in a dl-run checkout, pip install -e ".[mlflow]")'
SWEEP_RECORD = "mlflow_sweep.json"  # in a sweep directory: the parent run its jobs' runs belong to
RETRY_SECONDS = 15.0  # after a failed send, how long the values wait before the next try
PARAM_LENGTH = 6000  # MLflow's limit on a param's value


@dataclass(frozen=True)
class Store:
    """Where the runs go: the tracking URI, and for a SQLite file its lock and artifact folder."""

    uri: str
    database: Path | None = None  # a SQLite file: its writers (parallel sweep jobs) take turns through a lock file
    artifacts: Path | None = None  # where new experiments keep their artifacts (None: the server decides)

    @property
    def remote(self) -> bool:
        return self.uri.startswith(("http://", "https://"))

    @contextmanager
    def locked(self) -> Iterator[None]:
        """One writer at a time on a SQLite store (4 joblib jobs at once would meet 'database is locked')."""
        if self.database is None:
            yield
            return
        with file_lock(self.database.with_name(self.database.name + ".lock")):
            yield


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing), held by one process at a time."""
    import fcntl

    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store_root(run_dir: Path) -> Path:
    """The folder of the default store: outputs/ for runs under ./outputs (Hydra's default layout), else the sweep
    directory of a sweep's job, else the run directory itself (a folder dl-run made, wherever the user put it)."""
    run_dir = Path(run_dir).resolve()
    outputs = (Path.cwd() / "outputs").resolve()
    if run_dir.is_relative_to(outputs):
        return outputs
    if (run_dir.parent / "multirun.yaml").is_file():
        return run_dir.parent
    return run_dir


def resolve_store(tracking_uri: str | None, run_dir: Path) -> Store:
    """The Store a run's logger.mlflow.tracking_uri names (None: <store_root>/mlflow.db)."""
    if tracking_uri is None:
        root = store_root(run_dir)
        return Store(f"sqlite:///{root / 'mlflow.db'}", root / "mlflow.db", root / "mlflow-artifacts")
    if tracking_uri.startswith("sqlite:///"):
        database = Path(tracking_uri[len("sqlite:///"):]).expanduser().resolve()
        return Store(f"sqlite:///{database}", database, database.parent / "mlflow-artifacts")
    return Store(tracking_uri.rstrip("/"))


def check_mlflow(run_dir: Path, tracking_uri: str | None = None, experiment: str | None = None) -> None:
    """Before training: the package, a store folder that exists, a server that answers (a ConfigError if not)."""
    if find_spec("mlflow") is None:
        raise ConfigError(f"'logger=mlflow' needs the mlflow package, which is not installed. Install it with:  "
                          f"{INSTALL}", key="logger")
    if experiment is not None and not str(experiment).strip():
        raise ConfigError("'logger.mlflow.experiment' is empty: give a name, or null to name it after the dataset.",
                          key="logger.mlflow.experiment")
    if tracking_uri is not None and not tracking_uri.startswith(("sqlite:///", "http://", "https://")):
        raise ConfigError(f"'logger.mlflow.tracking_uri={tracking_uri}' is neither sqlite:///<file> nor the "
                          f"http(s)://host:port of an MLflow server; null (the default) keeps the runs in "
                          f"outputs/mlflow.db.", key="logger.mlflow.tracking_uri")
    store = resolve_store(tracking_uri, run_dir)
    # The default store's folder is one dl-run makes (outputs/, the run or sweep directory); a named one must exist.
    if tracking_uri is not None and store.database is not None and not store.database.parent.is_dir():
        raise ConfigError(f"'logger.mlflow.tracking_uri={tracking_uri}': the folder {store.database.parent} does not "
                          f"exist. dl-run writes only into folders it made or you name: create it, or leave the key "
                          f"null to keep the runs in outputs/mlflow.db.", key="logger.mlflow.tracking_uri")
    if store.remote:
        problem = server_problem(store.uri)
        if problem is not None:
            raise ConfigError(f"'logger.mlflow.tracking_uri={tracking_uri}': no MLflow server answers there "
                              f"({problem}). Start one (mlflow server --host 127.0.0.1 --port <port>), check the "
                              f"address, or leave the key null to keep the runs in outputs/mlflow.db.",
                              key="logger.mlflow.tracking_uri")


def server_problem(uri: str, timeout: float = 5.0) -> str | None:
    """None when an MLflow server answers at uri (its /health page), else what went wrong, in words."""
    try:
        with urllib.request.urlopen(f"{uri}/health", timeout=timeout) as response:
            return None if response.status == 200 else f"HTTP {response.status} from {uri}/health"
    except urllib.error.HTTPError as err:
        return f"HTTP {err.code} from {uri}/health"
    except (urllib.error.URLError, OSError, ValueError) as err:
        return str(getattr(err, "reason", err))


# ---- processes: which RUNNING runs were left so by a process that is gone ----------------------------------------

def _start_ticks(pid: int) -> str:
    """When process pid started (clock ticks since boot, from /proc), so a reused process id is not mistaken for it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def process_stamp(pid: int | None = None) -> str:
    """'host pid start' of a process (this one by default): recorded on each run it logs."""
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()} {pid} {_start_ticks(pid)}"


def process_gone(stamp: str) -> bool:
    """Whether the process of a stamp has ended; a process on another host is never judged gone."""
    host, pid, *start = stamp.split(" ")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # another user's process: it exists
    return bool(start and start[0]) and _start_ticks(int(pid)) != start[0]


def mark_gone_runs(client: Any, keep: set[str] = frozenset()) -> list[str]:
    """Runs still RUNNING whose process on this host is gone (a SIGKILL, a crash) become KILLED; ids in `keep` (a run
    about to be resumed) and runs whose process still runs (a parallel sweep's jobs) are left alone."""
    experiments = [e.experiment_id for e in client.search_experiments()]
    if not experiments:
        return []
    marked = []
    for run in client.search_runs(experiments, filter_string="attributes.status = 'RUNNING'", max_results=5000):
        stamp = run.data.tags.get("dlrun.process")
        if stamp and run.info.run_id not in keep and process_gone(stamp):
            client.set_tag(run.info.run_id, "status", "killed")
            client.set_terminated(run.info.run_id, "KILLED")
            marked.append(run.info.run_id)
    return marked


def open_client(store: Store) -> Any:
    """An MlflowClient on the store; its first use creates a SQLite store's tables (under the store's lock)."""
    for name in ("alembic", "mlflow.store.db.utils", "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)  # schema migrations and run links: not the user's business
    if store.remote:  # a server that went away: fail fast and retry later, never stall a step for minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=store.uri)


def experiment_id(client: Any, name: str, store: Store) -> str:
    """The experiment called `name`, made (with its artifacts beside a SQLite store) or restored if deleted."""
    found = client.get_experiment_by_name(name)
    if found is None:
        location = store.artifacts.as_uri() if store.artifacts is not None else None
        return client.create_experiment(name, artifact_location=location)
    if found.lifecycle_stage == "deleted":
        client.restore_experiment(found.experiment_id)
    return found.experiment_id


def sweep_parent(client: Any, experiment: str, run_dir: Path, store: Store) -> tuple[str, str] | None:
    """(parent run id, its experiment) for a job of a sweep, made by the first job that gets here; None outside one."""
    sweep_dir = Path(run_dir).parent
    if not (sweep_dir / "multirun.yaml").is_file():
        return None
    record = sweep_dir / SWEEP_RECORD
    with file_lock(sweep_dir / f".{SWEEP_RECORD}.lock"):  # joblib jobs start together: one makes the parent
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved.get("tracking_uri") == store.uri:
                return saved["run_id"], saved["experiment_id"]
        # The process that launched the sweep (dl-run's DLRUN_PID): the parent stays RUNNING as long as it runs.
        launcher = int(os.environ.get("DLRUN_PID") or os.getpid())
        parent = client.create_run(experiment, run_name=sweep_dir.name, tags={
            "dlrun.sweep_dir": str(sweep_dir), "dlrun.process": process_stamp(launcher), "status": "running"})
        partial = record.with_name(record.name + ".partial")
        partial.write_text(json.dumps({"run_id": parent.info.run_id, "experiment_id": experiment,
                                       "tracking_uri": store.uri}))
        os.replace(partial, record)
        return parent.info.run_id, experiment


def finish_sweep(sweep_dir: Path, summaries: list[Path], failed: bool = False) -> None:
    """The sweep's parent run (if its jobs logged to MLflow) gets the summary files and ends; a warning if it cannot."""
    record = Path(sweep_dir) / SWEEP_RECORD
    if not record.is_file():
        return
    saved = json.loads(record.read_text())
    store = resolve_store(saved["tracking_uri"], sweep_dir)
    try:
        with store.locked():
            client = open_client(store)
            for path in summaries:
                if path.is_file():
                    client.log_artifact(saved["run_id"], str(path))
            client.set_tag(saved["run_id"], "status", "failed" if failed else "completed")
            client.set_terminated(saved["run_id"], "FAILED" if failed else "FINISHED")
    except Exception as err:  # noqa: BLE001 - the sweep's own files are written; MLflow missing them is a warning
        console.print_warning(f"MLflow at {store.uri} did not get the sweep's summary ({err}).")


# ---- the logger ---------------------------------------------------------------------------------------------------

class MlflowLogger:
    """One MLflow run: metrics sent in batches at each checkpoint, figures and files as artifacts at the end."""

    histograms = False  # MLflow has no histogram view

    def __init__(self, client: Any, store: Store, run_id: str, run_dir: Path, log_every_n_steps: int = 10,
                 gradients_every_n_steps: int = 100, figures: bool = True, gradcam_every_n_epochs: int = 0) -> None:
        self.client, self.store, self.run_id, self.run_dir = client, store, run_id, Path(run_dir)
        self.log_dir = self.run_dir  # it keeps figures: views draw for it
        self.log_every_n_steps = log_every_n_steps
        self.gradients_every_n_steps = gradients_every_n_steps
        self.figures = figures
        self.gradcam_every_n_epochs = gradcam_every_n_epochs
        self.sent_before: set[tuple[str, int]] = set()  # (key, step) a killed process sent past its last checkpoint
        self._pending: list[Any] = []
        self._figures: dict[str, bytes] = {}
        self._notes: dict[str, str] = {}
        self._failed_at: float | None = None  # when the last send failed (None: the store answers)
        self._warned = False

    def scalars(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending.extend(Metric(key, float(value), now, step) for key, value in values.items()
                             if (key, step) not in self.sent_before)
        if len(self._pending) >= 5000:  # a long epoch: do not hold everything until its checkpoint
            self._send()

    def text(self, tag: str, markdown: str, step: int) -> None:
        self._notes[tag] = markdown  # the latest of each, as a file among the run's artifacts at the end

    def histogram(self, tag: str, values: Any, step: int) -> None:
        pass

    def figure(self, tag: str, figure: Any, step: int, close: bool = True) -> None:
        """The latest figure of each tag, kept as a PNG and sent among the artifacts at the end."""
        if self.figures:
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
            self._figures[tag] = buffer.getvalue()
        if close:
            import matplotlib.pyplot as plt

            plt.close(figure)

    def images(self, tag: str, images: Any, step: int) -> None:
        pass  # image grids stay in TensorBoard; the figures are artifacts

    def hparams(self, params: dict[str, object], metrics: dict[str, float], step: int) -> None:
        """The final scores (hparam/test/accuracy, ...) as metrics; the params were logged when the run started."""
        self.scalars(metrics, step)

    def flush(self) -> None:
        """Send what was logged (called before each checkpoint: a resume finds every value up to it)."""
        self._send()

    def checkpoint_state(self) -> dict[str, Any]:
        """The run's id and store, kept in each checkpoint: `resume=` continues this same MLflow run."""
        return {"mlflow": {"run_id": self.run_id, "tracking_uri": self.store.uri}}

    def _send(self, last_try: bool = False) -> None:
        if not self._pending or (not last_try and self._failed_at is not None
                                 and time.monotonic() - self._failed_at < RETRY_SECONDS):
            return
        try:
            with self.store.locked():
                while self._pending:
                    self.client.log_batch(self.run_id, metrics=self._pending[:1000])  # MLflow's limit per batch
                    del self._pending[:1000]
            if self._failed_at is not None:
                console.console.print(f"MLflow at {self.store.uri} answers again: the values it missed are sent.")
            self._failed_at = None
        except Exception as err:  # noqa: BLE001 - the tracker must not end the training; the values wait
            self._failed_at = time.monotonic()
            if not self._warned:
                self._warned = True
                console.print_warning(f"MLflow at {self.store.uri} did not take the run's values ({err}). Training "
                                      f"goes on; the values are kept and sent when it answers again.")

    def end(self, status: str = "FINISHED") -> None:
        """The last values, the artifacts and tags, and the run's end status (FINISHED, FAILED or KILLED)."""
        self._send(last_try=True)
        try:
            with self.store.locked():
                self._send_artifacts()
                from mlflow.entities import RunTag

                self.client.log_batch(self.run_id, tags=[RunTag(k, v) for k, v in self._end_tags(status).items()])
                self.client.set_terminated(self.run_id, status)
        except Exception as err:  # noqa: BLE001 - the run's own files are complete; MLflow missing them is a warning
            console.print_warning(f"MLflow at {self.store.uri} did not get the end of run {self.run_id} ({err}); the "
                                  f"run directory has everything ({self.run_dir}).")
        if self._pending:
            console.print_warning(f"{len(self._pending)} metric values never reached MLflow at {self.store.uri} (it "
                                  f"did not answer); they are in {self.run_dir}/metrics.json (per epoch) and in "
                                  f"TensorBoard if it was on.")

    def close(self) -> None:
        self.end("FINISHED")

    def _end_tags(self, status: str) -> dict[str, str]:
        metrics_file = self.run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        tags = {"status": metrics.get("status") or {"FINISHED": "completed", "KILLED": "interrupted"}.get(status,
                                                                                                          "failed")}
        verdict = (metrics.get("verdict") or {}).get("case")
        if verdict:
            tags["verdict"] = verdict
        return tags

    def _send_artifacts(self) -> None:
        """The composed config, metrics.json, curves.png and the run's other figures, and the notes and figures the
        views logged, as the run's artifacts."""
        for path, folder in ((self.run_dir / ".hydra" / "config.yaml", "config"),
                             (self.run_dir / ".hydra" / "overrides.yaml", "config"),
                             (self.run_dir / "metrics.json", None),
                             *((png, None) for png in sorted(self.run_dir.glob("*.png")))):
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path), folder)
        if not (self._figures or self._notes):
            return
        with tempfile.TemporaryDirectory(prefix="dlrun-mlflow-") as scratch:  # outside the run directory
            for folder, items, suffix in (("figures", self._figures, ".png"), ("notes", self._notes, ".md")):
                (Path(scratch) / folder).mkdir()
                for tag, content in items.items():
                    target = Path(scratch) / folder / (tag.replace("/", "_") + suffix)
                    target.write_bytes(content) if isinstance(content, bytes) else target.write_text(content)
                self.client.log_artifacts(self.run_id, str(Path(scratch) / folder), folder)


def _resumed_run(client: Any, saved: dict[str, Any], store: Store, purge_step: int | None) -> tuple[Any, set]:
    """The MLflow run a checkpoint names, set RUNNING again, and the (key, step) values it holds from purge_step on;
    (None, set()) when that run is not in this store (a warning: a new run continues the curves)."""
    if not saved.get("run_id"):
        return None, set()
    if saved.get("tracking_uri") != store.uri:
        console.print_warning(f"This run logged to MLflow at {saved.get('tracking_uri')}, not {store.uri}: its "
                              f"continuation is a new MLflow run.")
        return None, set()
    try:
        run = client.get_run(saved["run_id"])
    except Exception:  # noqa: BLE001 - deleted from the store: start a new run, as said
        console.print_warning(f"MLflow run {saved['run_id']} is not in {store.uri} any more: the resumed run logs "
                              f"to a new one.")
        return None, set()
    client.update_run(run.info.run_id, status="RUNNING")
    sent = {(key, m.step) for key in run.data.metrics for m in client.get_metric_history(run.info.run_id, key)
            if purge_step is not None and m.step >= purge_step}
    return run, sent


def _log_params(client: Any, run: Any, params: dict[str, Any]) -> None:
    """The flattened config as params; a resumed run keeps its first values (MLflow's params never change) and
    records a value changed at the resume as a tag param_at_resume.<key>."""
    from mlflow.entities import Param, RunTag

    logged = run.data.params
    values = {key: str(value)[:PARAM_LENGTH] for key, value in params.items()}
    new = [Param(k, v) for k, v in values.items() if k not in logged]
    changed = [RunTag(f"param_at_resume.{k}", v) for k, v in values.items() if k in logged and logged[k] != v]
    for start in range(0, max(len(new), len(changed)), 100):  # MLflow's limit per batch
        client.log_batch(run.info.run_id, params=new[start:start + 100], tags=changed[start:start + 100])


@LOGGERS.register("mlflow")
def build_mlflow(run_dir: Path, purge_step: int | None = None, resume_state: dict | None = None,  # noqa: PLR0913
                 run_info: dict | None = None, tracking_uri: str | None = None, experiment: str | None = None,
                 log_every_n_steps: int = 10, gradients_every_n_steps: int = 100, figures: bool = True,
                 gradcam_every_n_epochs: int = 0) -> MlflowLogger:
    """An MLflow run for this run (or the one its checkpoint names, on resume), in the experiment `experiment`
    (default: the dataset's name), in the store of `tracking_uri` (default: outputs/mlflow.db beside the runs)."""
    check_mlflow(run_dir, tracking_uri, experiment)
    run_info = run_info or {}
    tags = {k: str(v) for k, v in (run_info.get("tags") or {}).items() if v is not None}
    store = resolve_store(tracking_uri, run_dir)
    saved = (resume_state or {}).get("mlflow") or {}
    with store.locked():  # the client's first use creates a new SQLite store's tables: one process at a time
        client = open_client(store)
        mark_gone_runs(client, keep={saved.get("run_id")})
        run, sent = _resumed_run(client, saved, store, purge_step)
        if run is None:
            exp = experiment_id(client, str(experiment or tags.get("dataset") or "dl-run"), store)
            parent = sweep_parent(client, exp, run_dir, store)
            if parent is not None:
                tags["mlflow.parentRunId"], exp = parent
            run = client.create_run(exp, run_name=Path(run_dir).name, tags={
                **tags, "status": "running", "dlrun.run_dir": str(Path(run_dir).resolve())})
        client.set_tag(run.info.run_id, "dlrun.process", process_stamp())
        _log_params(client, run, run_info.get("params") or {})
    console.console.print(f"MLflow: run {run.info.run_id} in {store.uri} (dl-run-board --mlflow opens it)",
                          soft_wrap=True)
    logger = MlflowLogger(client, store, run.info.run_id, run_dir, log_every_n_steps, gradients_every_n_steps,
                          figures, gradcam_every_n_epochs)
    logger.sent_before = sent
    return logger


build_mlflow.check = check_mlflow  # called by dlrun.loggers.check_logger before training
