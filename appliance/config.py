"""The node's one typed configuration object.

Sources, later ones winning: built-in defaults, a TOML file (``--config PATH`` or
``FAME_NODE_CONFIG``), and ``FAME_NODE_*`` environment variables, nested with ``__``
(``FAME_NODE_PROCESSING__WORKERS=4``, ``FAME_NODE_PATHS__ROOT=/srv/fame``).

Relative folders are resolved against ``paths.root``. `load_config` validates everything
at start and raises `ConfigError` whose lines name the key, the value received and what
is expected; `check_config` adds the checks that touch the machine (folders writable,
model bundle present and intact).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from appliance.config_section import Section as _Section
from appliance.cpus import usable_cpus
from appliance.dicom_config import DicomNetConfig, DicomOutConfig, DicomSendConfig
from appliance.errors import ConfigError
from appliance.federation.config import FederationConfig

CONFIG_SCHEMA_VERSION = 1
ENV_PREFIX = "FAME_NODE_"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_BUNDLE = REPO_ROOT / "models" / "default"


class PathsConfig(_Section):
    root: Path = Field(Path("fame-node-data"), description="base folder; relative paths below it")
    inbox: Path = Field(Path("inbox"), description="drop folder the PACS exports into (watched)")
    work: Path = Field(Path("work"), description="scratch space")
    results: Path = Field(Path("results"), description="per-image masks, overlays, result.json")
    quarantine: Path = Field(Path("quarantine"), description="copies of rejected files")
    outbox: Path = Field(Path("outbox"), description="files for the PACS (DICOM SEG / SR)")
    models: Path = Field(Path("models"), description="installed model bundles")
    database: Path = Field(Path("fame-node.sqlite3"), description="the SQLite results store")

    def resolve(self, name: str) -> Path:
        """The absolute path of folder `name` (inbox, work, ...), relative ones under root."""
        value: Path = getattr(self, name)
        root = self.root.expanduser()
        path = value.expanduser()
        return (path if path.is_absolute() else root / path).resolve()


class IngestConfig(_Section):
    rescan_interval_s: float = Field(
        30.0, gt=0, description="seconds between rescans of the inbox (network shares)"
    )
    settle_s: float = Field(
        2.0, ge=0, description="a file found by a rescan must be unchanged this long"
    )
    max_attempts: int = Field(
        3, ge=1, description="a job that crashed the node this many times is set aside"
    )
    close_settle_s: float = Field(
        1.0,
        ge=0,
        description="a file closed by its writer is taken once unchanged this long (a writer "
        "may reopen it to append)",
    )
    max_input_bytes: int = Field(
        1 << 30,
        ge=1024,
        description="largest inbox file taken (bytes); a larger one is rejected unread",
    )
    retry_initial_s: float = Field(
        2.0, gt=0, description="first wait before a job hit by a passing fault is retried"
    )
    retry_max_s: float = Field(
        300.0, gt=0, description="longest wait between retries of a passing fault (backoff cap)"
    )


class ProcessingConfig(_Section):
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="parallel processing threads; 0 = one per CPU this process may use (at "
        "most 16): each worker reads, analyses and writes its own files",
    )
    max_frames: int = Field(
        16, ge=1, le=1000, description="frames analysed per multi-frame file (evenly sampled)"
    )
    max_image_pixels: int = Field(
        50_000_000, ge=1024, description="largest rows*columns*frames decoded from one file"
    )
    copy_rejected_to_quarantine: bool = Field(
        True, description="copy rejected inputs to quarantine/ (the inbox file is never touched)"
    )
    quarantine_max_file_bytes: int = Field(
        64 << 20, ge=0, description="a rejected input larger than this is not copied to quarantine"
    )
    quarantine_max_bytes: int = Field(
        2 << 30, ge=0, description="quarantine/ holds at most this many bytes of copies"
    )
    decode_timeout_s: float = Field(
        30.0, gt=0, le=3600, description="wall time one input may take to decode; then killed"
    )
    decode_memory_mb: int = Field(
        2048,
        ge=256,
        description="address space a decoder process may use (MiB); beyond it the input is "
        "rejected as too costly",
    )
    job_timeout_s: float = Field(
        300.0,
        gt=0,
        description="a job running longer than this is reported stuck by the watchdog",
    )
    min_image_side: int = Field(
        32, ge=1, description="images with fewer rows or columns are rejected (nothing to judge)"
    )
    max_jpeg_scans: int = Field(
        100, ge=1, description="a JPEG with more scans than this is rejected unread"
    )

    def worker_count(self) -> int:
        """`workers`, with 0 resolved to the CPUs this process may use (at most 16)."""
        return self.workers or min(16, usable_cpus())


class ThresholdsConfig(_Section):
    mask_threshold: float | None = Field(
        None, gt=0, lt=1, description="lesion probability threshold; None: the bundle's value"
    )
    min_lesion_area_px: int | None = Field(
        None, ge=0, description="smaller components are dropped (network input pixels)"
    )
    low_confidence: float = Field(
        0.6, gt=0, le=1, description="results below this top-class probability are flagged"
    )


class RuntimeConfig(_Section):
    backend: Literal["auto", "tensorrt", "onnxruntime-cuda", "torch-cuda", "onnxruntime-cpu"] = (
        Field(
            "auto",
            description="inference backend; auto takes the first that really runs here, in the "
            "order tensorrt, onnxruntime-cuda, torch-cuda, onnxruntime-cpu",
        )
    )
    intra_op_threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime threads per inference; 0 = the CPUs this process may use "
        "shared out among the workers (one each where there are as many workers as CPUs)",
    )
    intra_op_spinning: bool = Field(
        True,
        description="ONNX Runtime threads busy-wait for work between operators (lower latency; "
        "false leaves those cycles to the workers' reading and writing on small CPUs)",
    )
    batch_size: int = Field(8, ge=1, le=256, description="frames per inference call")
    precision: Literal["fp16", "fp32"] = Field(
        "fp16", description="GPU backends' precision (the CPU always runs FP32)"
    )
    micro_batch_max: int = Field(
        8,
        ge=1,
        le=256,
        description="frames merged from concurrent workers into one inference; 1 disables "
        "micro-batching; also the largest batch of TensorRT engines' optimisation profile",
    )
    micro_batch_on_cpu: bool = Field(
        False,
        description="micro-batch on the CPU backend too; off by default: on a CPU a batch "
        "saves little per frame, while workers that each run their own frames on their "
        "own core measured 1.5x the throughput (docs/PERFORMANCE.md)",
    )
    micro_batch_wait_ms: float = Field(
        2.0, ge=0, le=1000, description="how long a batch waits for more workers' frames"
    )
    engine_cache_dir: Path | None = Field(
        None,
        description="where TensorRT engines and their timing cache are built and kept; "
        "None: $XDG_CACHE_HOME/fame-node/engines (~/.cache/fame-node/engines)",
    )
    torch_compile: bool = Field(
        True, description="torch-cuda backend: compile the model with torch.compile"
    )

    def engine_dir(self) -> Path:
        """The engine cache folder (not created here)."""
        if self.engine_cache_dir is not None:
            return self.engine_cache_dir.expanduser()
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "fame-node" / "engines"


class ModelsConfig(_Section):
    bundle: Path = Field(
        DEFAULT_BUNDLE,
        description="the initial model: active until `fame-node models activate` records another",
    )
    trusted_keys: tuple[Path, ...] = Field(
        (),
        description="ed25519 public key files (PEM or one line of base64) whose signatures on "
        "a bundle's manifest this node accepts",
    )
    require_signature: bool = Field(
        False,
        description="refuse bundles that are unsigned or signed by a key not in trusted_keys "
        "(a bad signature is always refused)",
    )
    poll_interval_s: float = Field(
        2.0, gt=0, le=60, description="how often the service checks for a newly activated model"
    )


class LoggingConfig(_Section):
    format: Literal["text", "json"] = Field(
        "text",
        description="text: one line per record for a person; json: one JSON object per line "
        "(time, level, logger, message, thread, job) for a log collector",
    )


class MetricsConfig(_Section):
    enabled: bool = Field(
        False,
        description="serve /metrics (Prometheus) and /healthz (the node's health as JSON, 503 "
        "when it is blocked) over HTTP",
    )
    bind_address: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address listened on; 127.0.0.1: only this machine (a scraper elsewhere: "
        "the host's address, behind the hospital's firewall)",
    )
    port: int = Field(9464, ge=0, le=65535, description="TCP port listened on (0: any free one)")


class NodeConfig(BaseSettings):
    """Everything the node is configured with. Parsed once at start, then passed down."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", frozen=True
    )

    schema_version: int = Field(CONFIG_SCHEMA_VERSION, description="config format version")
    node_name: str = Field("fame-node", min_length=1, description="shown in the GUI and logs")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    paths: PathsConfig = PathsConfig()
    ingest: IngestConfig = IngestConfig()
    processing: ProcessingConfig = ProcessingConfig()
    thresholds: ThresholdsConfig = ThresholdsConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    models: ModelsConfig = ModelsConfig()
    dicom_out: DicomOutConfig = DicomOutConfig()
    dicom_net: DicomNetConfig = DicomNetConfig()
    logging: LoggingConfig = LoggingConfig()
    metrics: MetricsConfig = MetricsConfig()
    dicom_send: DicomSendConfig = DicomSendConfig()
    federation: FederationConfig = FederationConfig()

    @field_validator("schema_version")
    @classmethod
    def _known_schema(cls, v: int) -> int:
        if v != CONFIG_SCHEMA_VERSION:
            raise ValueError(f"this node reads config schema_version {CONFIG_SCHEMA_VERSION}")
        return v

    @model_validator(mode="after")
    def _send_needs_output(self) -> NodeConfig:
        if self.dicom_send.enabled and not self.dicom_out.enabled:
            raise ValueError(
                "dicom_send.enabled = true but dicom_out.enabled = false: nothing would be "
                "written to send; enable dicom_out or disable dicom_send"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (the TOML file, passed by load_config) is below the environment.
        return (env_settings, init_settings)

    def folder(self, name: str) -> Path:
        return self.paths.resolve(name)

    @property
    def database_path(self) -> Path:
        return self.paths.resolve("database")


def _format_error(err: Any, source: str) -> str:
    key = ".".join(str(p) for p in err["loc"]) or "(top level)"
    value = err.get("input")
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        return f"{key}: unknown key (from {source}); remove it or check its spelling"
    if err["type"] == "missing":
        return f"{key}: missing; expected a value"
    return f"{key} = {value!r}: {msg}"


def load_config(path: Path | None = None, *, env: dict[str, str] | None = None) -> NodeConfig:
    """Build the config from defaults, the TOML file at `path` and the environment.

    Raises
    ------
    ConfigError
        the file is missing or not TOML, or a value is invalid; one line per problem.
    """
    environ = os.environ if env is None else env
    if path is None and environ.get(ENV_PREFIX + "CONFIG"):
        path = Path(environ[ENV_PREFIX + "CONFIG"])
    data: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError([f"config file {path} does not exist"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError([f"config file {path} is not valid TOML: {exc}"]) from None
        except OSError as exc:
            raise ConfigError([f"config file {path} cannot be read: {exc}"]) from None
    saved: dict[str, str] | None = None
    if env is not None:
        # pydantic-settings reads os.environ; swap in the given mapping for the duration.
        saved = {k: v for k, v in os.environ.items() if k.startswith(ENV_PREFIX)}
        for k in saved:
            del os.environ[k]
        os.environ.update({k: v for k, v in env.items() if k.startswith(ENV_PREFIX)})
    try:
        data.pop("config", None)
        return NodeConfig(**data)
    except ValidationError as exc:
        problems = [_format_error(e, source) for e in exc.errors()]
        raise ConfigError(problems) from None
    finally:
        if saved is not None:
            for k in [k for k in os.environ if k.startswith(ENV_PREFIX)]:
                del os.environ[k]
            os.environ.update(saved)


def check_config(config: NodeConfig) -> list[str]:
    """Checks that touch the machine: folders creatable and writable, bundle intact.

    Returns one line per problem (empty when all is well); changes nothing but may create
    missing folders under `paths.root` (as `fame-node run` would).
    """
    # local imports: the registry imports this module
    from appliance.errors import FameNodeError
    from appliance.models.registry import ModelRegistry
    from appliance.models.signing import load_trusted_keys

    problems: list[str] = []
    for name in ("inbox", "work", "results", "quarantine", "outbox", "models"):
        folder = config.folder(name)
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            problems.append(f"paths.{name} = {str(folder)!r}: cannot be created ({exc.strerror})")
            continue
        if not os.access(folder, os.W_OK | os.X_OK) and name != "inbox":
            problems.append(f"paths.{name} = {str(folder)!r}: not writable by this user")
        if not os.access(folder, os.R_OK | os.X_OK):
            problems.append(f"paths.{name} = {str(folder)!r}: not readable by this user")
    db_dir = config.database_path.parent
    if not os.access(db_dir, os.W_OK):
        problems.append(f"paths.database = {str(config.database_path)!r}: folder not writable")
    for key in config.models.trusted_keys:
        try:
            load_trusted_keys([key])
        except FameNodeError as exc:
            problems.append(f"models.trusted_keys: {str(key)!r}: {exc}")
    try:
        registry = ModelRegistry(config)
        registry.load(registry.active().path)
    except FameNodeError as exc:
        problems.append(f"active model (models.bundle = {str(config.models.bundle)!r}): {exc}")
    return problems
