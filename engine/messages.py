"""Every message that crosses a process boundary, typed in one place.

Three processes talk:
- the *API process* (HTTP + the engine's supervisor and session registry),
- the *model host* (loads the model once, then forks workers so they share its weights copy-on-write),
- the *workers* (each holds its sessions' FunASR caches and runs inference).

Messages are small frozen dataclasses pickled over `multiprocessing.connection` sockets. Audio never travels here:
it sits in the session's shared-memory ring (`engine.ring`), and messages only say where to look.
Positions (`end_pos`, `processed_pos`) are absolute 16 kHz sample indices in that ring.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

from engine.units import DEFAULT_CHUNK_SIZE, SAMPLES_PER_FRAME


@dataclass(frozen=True)
class StreamOptions:
    """Per-session decoding options, as FunASR's streaming `generate()` takes them.

    `chunk_size=(0, 10, 5)`: no left context, 10 LFR frames (600 ms) per stride, 5 frames (300 ms) of look-ahead.
    `encoder_chunk_look_back` / `decoder_chunk_look_back`: how many previous chunks the encoder self-attention and
    the decoder FSMN keep in the cache.
    """

    chunk_size: tuple[int, int, int] = DEFAULT_CHUNK_SIZE
    encoder_chunk_look_back: int = 4
    decoder_chunk_look_back: int = 1

    @property
    def stride_samples(self) -> int:
        """Samples per stride: chunk_size[1] frames of 60 ms (9600 = 600 ms for the default)."""
        return self.chunk_size[1] * SAMPLES_PER_FRAME


class Mode(str, Enum):
    """What a session produces (FunASR's three modes, as its WebSocket protocol names them).

    - ONLINE: partials from the streaming model, every stride (no VAD, no second pass).
    - TWO_PASS: the same partials, plus a `sentence` for each VAD-ended sentence, decoded again by the offline model
      and punctuated.
    - OFFLINE: sentences only; the streaming model does not run.
    """

    ONLINE = "online"
    TWO_PASS = "2pass"
    OFFLINE = "offline"

    @property
    def streams(self) -> bool:
        """Runs the streaming model (partials)."""
        return self is not Mode.OFFLINE

    @property
    def sentences(self) -> bool:
        """Runs the VAD and the second pass (sentences)."""
        return self is not Mode.ONLINE


@dataclass(frozen=True)
class PipelineOptions:
    """Per-session options of the sentence path. Kept out of `StreamOptions` on purpose: that one is the key the
    streaming model batches sessions by, and hotwords must not split those batches (they only reach the offline
    model). `hotwords`: space-separated words, already normalised (engine/hotwords.py); "" for none."""

    mode: Mode = Mode.ONLINE
    hotwords: str = ""


# --- API process -> worker -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OpenSession:
    session_id: str
    ring_name: str
    options: StreamOptions
    pipeline: PipelineOptions = PipelineOptions()
    protocol: str = "rest"  # the door the session came in by: the worker's log lines about it say so


@dataclass(frozen=True)
class RestoreSession:
    """Carry on a session whose worker died: load its snapshot, replay the ring from there.

    `processed_pos` and `tokens` are what the API process has already heard, so the worker can send what the
    dead worker computed (and snapshotted) but never reported, and nothing twice. The tokens travel here, once per
    restore, rather than in every snapshot: a snapshot would otherwise grow with the session's age. `end_pos` is set
    if the session was closing."""

    session_id: str
    ring_name: str
    options: StreamOptions
    processed_pos: int
    tokens: tuple[str, ...]
    end_pos: int | None = None
    close_reason: str = ""
    pipeline: PipelineOptions = PipelineOptions()
    sentences: int = 0  # sentences the API process has heard: the worker sends the one its snapshot is ahead by
    protocol: str = "rest"


@dataclass(frozen=True)
class AudioReady:
    """A wake-up: more audio is in the ring. The ring header, not this message, says how much."""

    session_id: str


@dataclass(frozen=True)
class CloseSession:
    """Flush everything before `end_pos`, run the final step, then drop the session."""

    session_id: str
    end_pos: int
    reason: str = "closed"


@dataclass(frozen=True)
class AbortSession:
    session_id: str


@dataclass(frozen=True)
class DetachSession:
    """Give the session up for a move to another worker (load balancing). Handled between strides, so its last
    snapshot already covers everything computed: the worker only drops its handles (nothing is unlinked) and answers
    `SessionDetached`; the API process then sends the new worker a `RestoreSession`."""

    session_id: str


@dataclass(frozen=True)
class Ping:
    seq: int


@dataclass(frozen=True)
class Shutdown:
    pass


ToWorker = (
    OpenSession | RestoreSession | AudioReady | CloseSession | AbortSession | DetachSession | Ping | Shutdown
)


# --- worker -> API process -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hello:
    """First message on a worker's connection: which slot and incarnation it is."""

    slot: int
    generation: int
    pid: int


@dataclass(frozen=True)
class WorkerReady:
    slot: int
    generation: int
    device: str
    cpus: tuple[int, ...]


@dataclass(frozen=True)
class Pong:
    seq: int
    sessions: int
    cache_bytes: int
    strides: int


@dataclass(frozen=True)
class StrideDone:
    """One stride of one session was processed. `tokens` are this stride's new tokens (maybe none) and `text` is
    their text, FunASR's post-processing of this stride alone (what FunASR's own loop returns per call). Nothing here
    grows with the session's age. `transcript` is set on the final only: the whole session's text, post-processed
    over all its tokens once (with Latin word pieces that can differ from the strides' texts joined)."""

    session_id: str
    processed_pos: int
    tokens: tuple[str, ...]
    text: str
    transcript: str = ""
    final: bool = False
    reason: str = ""
    compute_s: float = 0.0  # the forward pass's wall time: shared by every session in its batch
    snapshot_s: float = 0.0  # time spent saving the session's snapshot after this stride
    batch_size: int = 1  # sessions that shared this stride's forward pass


@dataclass(frozen=True)
class SessionFailed:
    """This session cannot go on (its ring vanished, inference raised); other sessions are unaffected."""

    session_id: str
    message: str


@dataclass(frozen=True)
class SessionDetached:
    """The answer to `DetachSession`: the worker dropped the session at ring position `processed_pos` (what its snapshot
    covers; 0 if it had run no stride yet). Sent after every `StrideDone` of that session on the same connection, so
    when it arrives the API process has heard everything the old worker computed. A detach of a session the worker
    no longer has (it just finished or failed) gets no answer."""

    session_id: str
    processed_pos: int


@dataclass(frozen=True)
class SentenceDone:
    """One sentence of a 2pass/offline session, decoded by the offline model and punctuated.

    `index` counts a session's sentences from 0. `start_ms`/`end_ms` are the VAD's bounds in the session's audio
    (`end_ms` is where the audio ended when the close cut the sentence). `audio_start`/`audio_end` is the 16 kHz ring
    range that was decoded (the VAD's start with FunASR's pre-roll, to the frame the end was found in).
    `timestamps` are per token, in ms of the session's audio, where the offline model gives them."""

    session_id: str
    index: int
    text: str  # punctuated (raw when no punctuation model is configured)
    raw_text: str  # the offline model's own text
    tokens: tuple[str, ...]
    start_ms: int
    end_ms: int
    audio_start: int
    audio_end: int
    timestamps: tuple[tuple[int, int], ...] = ()
    compute_s: float = 0.0  # the offline batch's wall time plus this sentence's punctuation
    batch_size: int = 1  # sentences that shared the offline forward pass


FromWorker = Hello | WorkerReady | Pong | StrideDone | SentenceDone | SessionFailed | SessionDetached


# --- API process <-> model host --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SpawnWorker:
    slot: int
    generation: int
    cpus: tuple[int, ...]
    device: str


@dataclass(frozen=True)
class HostReady:
    pid: int
    load_s: float
    gpu_count: int = 0


@dataclass(frozen=True)
class HostFailed:
    """The model could not be loaded. `message` is for operators: it names the setting to fix."""

    message: str


@dataclass(frozen=True)
class WorkerSpawned:
    slot: int
    generation: int
    pid: int


@dataclass(frozen=True)
class WorkerExited:
    slot: int
    generation: int
    pid: int
    returncode: int


@dataclass(frozen=True)
class HostConfig:
    """What the model host needs to load the model and to let its workers dial back."""

    model: str
    device: str
    worker_threads: int
    address: str
    authkey: bytes = field(repr=False)
    max_batch: int = 1
    precision: str = "fp32"
    backend: str = "torch"
    vad_model: str = ""  # the 2pass models: "" = not configured
    offline_model: str = ""
    punc_model: str = ""
    offline_max_batch: int = 1
    max_sentence_ms: int = 60_000
    log_format: str = "text"  # PARASTREAM_LOG_FORMAT: the host's and the workers' lines follow the API process's
