"""The browser page at `GET /` (docs/browser.md), end to end in headless Chromium.

Playwright drives the Debian `chromium` (`make system-deps` installs it; browser downloads are impossible here). The
file picker's final text must equal the REST transcript of the same audio; with the trained demo model and a
synthesised sentence it must also be what was spoken. The microphone path runs on Chromium's fake capture device,
fed from a WAV. One browser for the module; a fresh context (and so a fresh localStorage) per test. Screenshots go
to $PARASTREAM_TEST_ARTIFACTS (default .cache/test-artifacts/).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import wave
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from app.client import ParastreamClient, stream_pcm
from engine.training import synth
from tests.harness import ROOT, ServiceProcess

ARTIFACTS = Path(os.environ.get("PARASTREAM_TEST_ARTIFACTS", ROOT / ".cache" / "test-artifacts"))
CHROMIUM = os.environ.get("PARASTREAM_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
RATE = 16000
FILE_DIGITS = "三一四一五九"  # the file picker's sentence
MIC_DIGITS = "八六七五三零九"  # the microphone's: a different one, so the two paths cannot be confused
KEY = "test-key-123"


@dataclass(frozen=True)
class Clip:
    spoken: str
    pcm: np.ndarray
    path: Path

    @property
    def seconds(self) -> float:
        return len(self.pcm) / RATE


def _write_wav(path: Path, pcm: np.ndarray) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Clip]:
    assert synth.espeak_available(), "espeak-ng is missing: `make system-deps` installs it"
    out = tmp_path_factory.mktemp("page")
    _, file_pcm = synth.synthesize_text(FILE_DIGITS)
    _, mic_pcm = synth.synthesize_text(MIC_DIGITS)
    # The fake capture device plays the file from when capture starts, and again and again: a second of silence
    # first keeps the start of speech clear of the moments the page takes to connect its worklet.
    mic_pcm = np.concatenate([np.zeros(RATE, np.int16), mic_pcm, np.zeros(RATE, np.int16)])
    return {
        "file": Clip(FILE_DIGITS, file_pcm, _write_wav(out / "digits.wav", file_pcm)),
        "mic": Clip(MIC_DIGITS, mic_pcm, _write_wav(out / "mic.wav", mic_pcm)),
    }


@pytest.fixture(scope="module")
def browser(clips: dict[str, Clip]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    assert Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}: `make system-deps` installs Debian's chromium"
    args = [
        "--use-fake-ui-for-media-stream",  # grant the microphone without asking
        "--use-fake-device-for-media-stream",
        f"--use-file-for-fake-audio-capture={clips['mic'].path}",
        "--autoplay-policy=no-user-gesture-required",
    ]
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        yield browser
        browser.close()


class Page:
    """One browser context on the service's page, recording every request it makes and every script error."""

    def __init__(self, browser: Any, base_url: str) -> None:
        self.base_url = base_url
        self.context = browser.new_context(base_url=base_url)
        self.page = self.context.new_page()
        self.requests: list[Any] = []
        self.errors: list[str] = []
        self.failed: list[str] = []  # answers of 400 and up, and requests with no answer (0)
        self.allowed: set[int] = set()  # ...that the test expects
        self.page.on("request", lambda request: self.requests.append(request))
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(f"{r.status} {r.url}"))
        self.page.on("requestfailed", self._request_failed)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.on("console", self._console)
        self.page.goto("/")

    def _request_failed(self, request: Any) -> None:
        # The page closes each event stream once `final` came: that is the one failure it causes itself.
        if not (request.failure == "net::ERR_ABORTED" and urlsplit(request.url).path.endswith("/events")):
            self.failed.append(f"0 {request.url} {request.failure}")

    def _console(self, msg: Any) -> None:
        # Chromium logs every failed request as a console error too; those are checked as responses (status 0: no
        # answer at all).
        if msg.type == "error" and not msg.text.startswith("Failed to load resource:"):
            self.errors.append(msg.text)

    def stream_file(self, clip: Clip, *, fast: bool, mode: str = "") -> float:
        """Pick the clip's WAV and wait for the final transcript; return the seconds that took."""
        self.page.set_checked("#fast", fast)
        if mode:
            self.page.select_option("#mode", mode)
        start = time.monotonic()
        self.page.set_input_files("#file", str(clip.path))
        self.wait_state("done", timeout_s=clip.seconds * (1 if fast else 2) + 30)
        return time.monotonic() - start

    def wait_state(self, state: str, timeout_s: float = 30) -> None:
        try:
            self.page.wait_for_function(
                "s => document.body.dataset.state === s || document.body.dataset.state === 'error'",
                arg=state,
                timeout=timeout_s * 1000,
            )
        except Exception as exc:
            raise AssertionError(f"page never reached {state!r}: {self.summary()}") from exc
        assert self.state() == state, self.summary()

    def session(self) -> dict[str, Any]:
        """`GET /v1/sessions/{id}` of the session the page shows."""
        answer: dict[str, Any] = httpx.get(f"{self.base_url}/v1/sessions/{self.text('#session')}").json()
        return answer

    def state(self) -> str:
        return str(self.page.evaluate("document.body.dataset.state"))

    def text(self, selector: str) -> str:
        return str(self.page.text_content(selector) or "")

    def all_texts(self, selector: str) -> list[str]:
        return [str(t) for t in self.page.eval_on_selector_all(selector, "els => els.map(e => e.textContent)")]

    def summary(self) -> str:
        shown = self.page.evaluate(
            """() => Object.fromEntries(['status', 'progress', 'error', 'final'].map(
                id => [id, document.getElementById(id).textContent]).concat([['state', document.body.dataset.state]]))"""
        )
        return f"{shown} script errors={self.errors} failed requests={self.failed}"

    def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / name
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def close(self) -> None:
        self.context.close()
        # Nothing from another origin (no CDN, no web fonts), and no script errors.
        foreign = [r.url for r in self.requests if not r.url.startswith((self.base_url, "data:"))]
        assert not foreign, foreign
        assert not self.errors, self.errors
        unexpected = [f for f in self.failed if int(f.split()[0]) not in self.allowed]
        assert not unexpected, unexpected


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    pages: list[Page] = []

    def open_(svc: ServiceProcess) -> Page:
        pages.append(Page(browser, svc.base_url))
        return pages[-1]

    yield open_
    for page in pages:
        page.close()


def rest_transcript(base_url: str, pcm: np.ndarray, **options: Any) -> dict[str, Any]:
    """The `final` event's data for `pcm` streamed over the REST API by app.client (in a thread of its own: the
    Playwright sync API keeps an event loop in this one)."""

    async def go() -> dict[str, Any]:
        async with ParastreamClient(base_url) as client:
            sid = (await client.create_session(**options))["id"]
            await stream_pcm(client, sid, pcm, RATE, frame_ms=1000, speed=1000.0)
            return [e async for e in client.events(sid)][-1].data

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result()


def digits_only(text: str) -> str:
    return "".join(ch for ch in text if ch in synth.DIGITS)


# ---------- serving ----------


def test_page_and_its_static_files_are_served(service: ServiceProcess) -> None:
    page = httpx.get(f"{service.base_url}/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'id="final"' in page.text and "/static/app.js" in page.text
    assert page.headers["cache-control"] == "no-cache"
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, media in [
        ("app.js", "text/javascript"),
        ("pcm-worklet.js", "text/javascript"),
        ("style.css", "text/css"),
    ]:
        r = httpx.get(f"{service.base_url}/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(media), (name, r.headers)
        assert r.content == (ROOT / "app" / "static" / name).read_bytes()
    for missing in ["nope.js", "index.html", "..%2Fmain.py", "%2E%2E%2F%2E%2E%2Fpyproject.toml"]:
        r = httpx.get(f"{service.base_url}/static/{missing}")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", (missing, r.text)
    assert httpx.post(f"{service.base_url}/").status_code == 405
    # Not an API endpoint: the OpenAPI schema leaves the page out.
    assert "/static/{name}" not in httpx.get(f"{service.base_url}/openapi.json").json()["paths"]


# ---------- a file ----------


def test_a_picked_file_gives_the_rest_transcript(
    service: ServiceProcess, clips: dict[str, Clip], open_page: Any
) -> None:
    clip = clips["file"]
    expected = rest_transcript(service.base_url, clip.pcm)
    page = open_page(service)
    page.stream_file(clip, fast=True)
    assert page.text("#final") == expected["text"], page.summary()
    assert expected["text"], "tiny-random gives some text for 3 s of speech"
    assert page.session()["samples_received"] == len(clip.pcm), "a 16 kHz mono WAV goes through sample for sample"
    # Every partial is shown with its time (samples_processed / 16000), grey; together they are the transcript.
    stamps = page.all_texts("#partials .partial time")
    assert stamps and all(s.endswith(" s") for s in stamps), stamps
    assert "".join(t.split(" s", 1)[1] for t in page.all_texts("#partials .partial")) == expected["text"]
    assert page.page.eval_on_selector("#partials .partial", "e => getComputedStyle(e).color") != "rgb(17, 17, 17)"
    audio = [r for r in page.requests if r.url.split("?")[0].endswith("/audio")]
    assert audio and all("offset=" in r.url for r in audio) and all(r.method == "POST" for r in audio)


def test_refused_and_lost_appends_are_sent_again_without_loss_or_repeats(
    service: ServiceProcess, clips: dict[str, Clip], open_page: Any
) -> None:
    clip = clips["file"]
    expected = rest_transcript(service.base_url, clip.pcm)
    page = open_page(service)
    page.allowed.update({0, 429})
    appends: list[str] = []

    def audio(route: Any) -> None:
        appends.append(route.request.url)
        if len(appends) == 2:  # the service's buffer is full: wait for Retry-After, send again
            body = '{"error": {"code": "buffer_full", "message": "test"}}'
            route.fulfill(status=429, headers={"Retry-After": "1"}, content_type="application/json", body=body)
        elif len(appends) == 4:  # the audio arrives but the answer is lost: the same offset again
            route.fetch()
            route.abort("connectionreset")
        else:
            route.continue_()

    page.page.route("**/v1/sessions/*/audio?*", audio)
    page.stream_file(clip, fast=True)
    assert page.text("#final") == expected["text"], page.summary()
    offsets = [int(parse_qs(urlsplit(url).query)["offset"][0]) for url in appends]
    assert len(offsets) >= 6 and offsets[1] == offsets[2] and offsets[3] == offsets[4], offsets
    assert offsets == sorted(offsets)
    assert page.session()["samples_received"] == len(clip.pcm)


def test_stop_ends_a_file_early(service: ServiceProcess, clips: dict[str, Clip], open_page: Any) -> None:
    clip = clips["file"]
    page = open_page(service)
    page.page.set_checked("#fast", False)
    page.page.set_input_files("#file", str(clip.path))
    page.page.wait_for_function(
        "() => parseFloat(document.getElementById('progress').textContent) >= 1", timeout=30_000
    )
    page.page.click("#stop")
    page.wait_state("done")
    sent = page.session()["samples_received"]
    assert RATE <= sent < len(clip.pcm) - RATE // 2, sent
    assert page.text("#final-meta").endswith("closed"), page.summary()


def test_a_picked_file_streams_in_real_time_and_is_transcribed_as_spoken(
    digits_service: ServiceProcess, clips: dict[str, Clip], open_page: Any
) -> None:
    clip = clips["file"]
    expected = rest_transcript(digits_service.base_url, clip.pcm)
    page = open_page(digits_service)
    first_partial: list[float] = []
    start = time.monotonic()
    page.page.set_checked("#fast", False)
    page.page.set_input_files("#file", str(clip.path))
    page.page.wait_for_selector("#partials .partial", timeout=30_000)
    first_partial.append(time.monotonic() - start)
    assert page.state() == "streaming", "partials arrive while the file is still being sent"
    page.wait_state("done", timeout_s=clip.seconds + 30)
    elapsed = time.monotonic() - start
    final = page.text("#final")
    shot = page.screenshot("page-file-digits.png")
    assert final == expected["text"], page.summary()
    assert final == clip.spoken, f"heard {final!r}, spoke {clip.spoken!r}"
    # Real-time pace: 100 ms frames on the wall clock, so sending takes the clip's length (less one frame).
    assert elapsed >= clip.seconds - 0.1, (elapsed, clip.seconds)
    assert first_partial[0] < clip.seconds, "the first partial came before the whole file was sent"
    audio = [r for r in page.requests if r.url.split("?")[0].endswith("/audio")]
    assert len(audio) >= clip.seconds / 0.1 - 1, "one append per 100 ms frame"
    assert shot.stat().st_size > 10_000


# ---------- the microphone ----------


def test_the_microphone_is_transcribed(digits_service: ServiceProcess, clips: dict[str, Clip], open_page: Any) -> None:
    clip = clips["mic"]
    page = open_page(digits_service)
    page.page.click("#mic")
    page.wait_state("streaming")
    # Chromium's fake device plays the WAV (silence, digits, silence) over and over: listen to it once.
    page.page.wait_for_function(
        "s => parseFloat(document.getElementById('progress').textContent) >= s", arg=clip.seconds, timeout=30_000
    )
    assert page.all_texts("#partials .partial"), page.summary()
    page.page.click("#stop")
    page.wait_state("done")
    page.screenshot("page-microphone.png")
    heard = page.text("#final")
    assert heard and digits_only(heard) == heard, page.summary()
    assert clip.spoken in heard, f"heard {heard!r}, the fake microphone said {clip.spoken!r}"


# ---------- 2pass: sentences ----------


def test_sentences_are_shown_with_their_times(
    twopass_service: ServiceProcess, clips: dict[str, Clip], open_page: Any
) -> None:
    clip = clips["file"]
    expected = rest_transcript(twopass_service.base_url, clip.pcm, mode="2pass")
    page = open_page(twopass_service)
    page.stream_file(clip, fast=True, mode="2pass")
    assert page.text("#final") == expected["text"], page.summary()
    sentences = page.all_texts("#sentences .sentence")
    assert sentences, page.summary()
    stamps = page.all_texts("#sentences .sentence time")
    assert all("–" in s and s.endswith(" s") for s in stamps), stamps
    assert "".join(s.split(" s", 1)[1] for s in sentences) == expected["text"]
    page.screenshot("page-2pass.png")


# ---------- errors and the API key ----------


def test_errors_are_shown_and_the_key_is_sent(service: ServiceProcess, clips: dict[str, Clip], open_page: Any) -> None:
    page = open_page(service)
    page.allowed.add(422)
    page.page.fill("#key", KEY)
    # A mode this service has no models for: the service's JSON error, on the page.
    page.page.select_option("#mode", "2pass")
    page.page.set_input_files("#file", str(clips["file"].path))
    page.wait_state("error")
    assert page.page.get_attribute("#error", "data-code") == "invalid_options", page.summary()
    assert "2pass" in page.text("#error") or "VAD" in page.text("#error"), page.summary()
    # Then a stream that works, with the key on every request: a bearer token on fetch, a query parameter on the
    # event stream (EventSource cannot set headers).
    page.page.select_option("#mode", "")
    page.stream_file(clips["file"], fast=True)
    assert page.text("#error") == ""
    api = [r for r in page.requests if "/v1/sessions" in r.url]
    events = [r for r in api if urlsplit(r.url).path.endswith("/events")]
    fetches = [r for r in api if r not in events]
    assert events and all(parse_qs(urlsplit(r.url).query)["api_key"] == [KEY] for r in events)
    assert fetches and all(r.headers.get("authorization") == f"Bearer {KEY}" for r in fetches)
    # The key is remembered.
    page.page.reload()
    assert page.page.input_value("#key") == KEY


def test_a_session_that_ends_badly_is_shown_and_the_page_recovers(
    service: ServiceProcess, clips: dict[str, Clip], open_page: Any, tmp_path: Path
) -> None:
    page = open_page(service)
    page.allowed.update({404, 409})  # the appends after the abort are refused
    # A session aborted while the file streams: the `error` event is shown, the page stops sending.
    page.page.set_checked("#fast", False)
    page.page.set_input_files("#file", str(clips["file"].path))
    page.wait_state("streaming")
    assert httpx.delete(f"{service.base_url}/v1/sessions/{page.text('#session')}").status_code == 204
    page.wait_state("error")
    assert page.page.get_attribute("#error", "data-code") == "aborted", page.summary()
    assert page.page.is_enabled("#mic") and page.page.is_enabled("#file") and not page.page.is_enabled("#stop")
    # A file the browser cannot decode.
    junk = tmp_path / "notes.wav"
    junk.write_text("not audio")
    page.page.set_input_files("#file", str(junk))
    page.wait_state("error")
    assert page.page.get_attribute("#error", "data-code") == "undecodable_file", page.summary()
    # And the next stream works.
    page.stream_file(clips["file"], fast=True)
    assert page.text("#final") and page.text("#error") == ""


# ---------- the worklet's resampler ----------

RESAMPLE = """([source, inRate, tones]) => {
    const SincResampler = new Function('AudioWorkletProcessor', 'registerProcessor', 'sampleRate',
        source + '; return SincResampler;')(class {}, () => {}, inRate);
    const r = new SincResampler(inRate, 16000);
    const out = [];
    const n = inRate * 2;  // 2 s, pushed in render quanta of 128 like the worklet's
    for (let at = 0; at < n; at += 128) {
        const block = new Float32Array(Math.min(128, n - at));
        for (let i = 0; i < block.length; i++)
            for (const [f, a] of tones) block[i] += a * Math.sin(2 * Math.PI * f * (at + i) / inRate);
        r.push(block, (y) => out.push(y));
    }
    r.flush((y) => out.push(y));
    return out;
}"""


@pytest.mark.parametrize("in_rate", [48000, 44100])
def test_the_worklet_resamples_to_16_khz_without_aliasing(browser: Any, in_rate: int) -> None:
    source = (ROOT / "app" / "static" / "pcm-worklet.js").read_text()
    page = browser.new_page()  # about:blank: no CSP, so the class can be evaluated out of the worklet
    try:
        # A 440 Hz tone comes through; a 12 kHz one (above 16 kHz's Nyquist) must not fold down to 4 kHz.
        out = np.array(page.evaluate(RESAMPLE, [source, in_rate, [[440, 0.5], [12000, 0.3]]]))
    finally:
        page.close()
    assert abs(len(out) - 2 * RATE) <= 2, len(out)
    t = np.arange(len(out)) / RATE
    middle = slice(RATE // 4, len(out) - RATE // 4)  # away from the start and the tail
    ideal = 0.5 * np.sin(2 * np.pi * 440 * t)
    noise = out[middle] - ideal[middle]
    snr_db = 10 * np.log10(np.mean(ideal[middle] ** 2) / np.mean(noise**2))
    print(f"{in_rate} Hz -> 16 kHz: 440 Hz tone with a 12 kHz one beside it, SNR {snr_db:.1f} dB")
    assert snr_db > 60, f"{snr_db:.1f} dB"
