// The Parastream page: microphone or file in, live transcript out. Plain JavaScript over the REST API (docs/api.md)
// and its Server-Sent Events; docs/browser.md describes what it does and why.

const RATE = 16000; // the session's sample rate: the page always sends 16 kHz PCM16
const FRAME_MS = 100; // one append every 100 ms of audio
const FRAME = (RATE * FRAME_MS) / 1000;
const MAX_BODY = RATE; // at most 1 s of audio per request when catching up (the service allows 20 s by default)
const KEY_STORE = 'parastream.apiKey';

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const seconds = (s) => s.toFixed(2);

// ---------- the REST API ----------

class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

function apiKey() {
  return $('key').value.trim();
}

// fetch with the key as a bearer token; JSON errors ({"error": {"code", "message"}}) become ApiError.
async function api(path, { method = 'POST', json, body } = {}) {
  const headers = {};
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) headers['Content-Type'] = 'application/json';
  if (body !== undefined) headers['Content-Type'] = 'application/octet-stream';
  let response;
  try {
    response = await fetch(path, { method, headers, body: json !== undefined ? JSON.stringify(json) : body });
  } catch (err) {
    throw new ApiError(0, 'network_error', `${method} ${path}: ${err.message}`);
  }
  if (response.ok) return response.status === 204 ? null : response.json();
  let error = { code: `http_${response.status}`, message: response.statusText || 'request failed' };
  try {
    const answer = await response.json();
    if (answer && answer.error) error = answer.error;
  } catch (_) {
    // not JSON: keep the status line
  }
  const retry = response.headers.get('Retry-After');
  throw new ApiError(response.status, error.code, error.message, retry === null ? null : Number(retry));
}

function pcmBody(samples) {
  // Little-endian whatever the platform (typed arrays use the platform's byte order).
  const view = new DataView(new ArrayBuffer(samples.length * 2));
  for (let i = 0; i < samples.length; i++) view.setInt16(i * 2, samples[i], true);
  return view.buffer;
}

// One session's audio: frames are queued and appended one request at a time, in order, each with `?offset=` so a
// retry (429 buffer_full after its Retry-After, or a network error) never applies audio twice.
class AudioSender {
  constructor(id) {
    this.id = id;
    this.sent = 0; // samples the service acknowledged
    this.queue = [];
    this.running = null;
    this.failure = null;
    this.onError = () => {};
  }

  push(samples) {
    if (this.failure || !samples.length) return;
    this.queue.push(samples);
    if (!this.running) this.running = this.pump().finally(() => { this.running = null; });
  }

  async pump() {
    while (this.queue.length && !this.failure) {
      let n = 0;
      const parts = [];
      while (this.queue.length && n + this.queue[0].length <= MAX_BODY) {
        const part = this.queue.shift();
        parts.push(part);
        n += part.length;
      }
      if (!parts.length) parts.push(this.queue.shift()); // a frame larger than MAX_BODY goes alone
      const samples = new Int16Array(parts.reduce((sum, p) => sum + p.length, 0));
      let at = 0;
      for (const p of parts) { samples.set(p, at); at += p.length; }
      try {
        await this.append(samples);
      } catch (err) {
        this.failure = err;
        this.queue = [];
        this.onError(err);
      }
    }
  }

  async append(samples) {
    const body = pcmBody(samples);
    for (let attempt = 0; ; attempt++) {
      try {
        const answer = await api(`/v1/sessions/${this.id}/audio?offset=${this.sent}`, { body });
        this.sent = answer.samples_received;
        return;
      } catch (err) {
        if (err.status === 429) {
          await sleep(1000 * (err.retryAfter || 1));
        } else if (err.status === 0 && attempt < 5) {
          await sleep(500 * (attempt + 1));
        } else {
          throw err;
        }
      }
    }
  }

  // Resolves once every queued frame is appended; rejects with the append error, if one stopped the stream.
  async drain() {
    while (this.running) await this.running;
    if (this.failure) throw this.failure;
  }
}

// ---------- the page ----------

const ui = {
  state(state, text) {
    document.body.dataset.state = state;
    if (text !== undefined) $('status').textContent = text;
    const busy = state === 'starting' || state === 'streaming' || state === 'closing';
    $('mic').disabled = busy;
    $('file').disabled = busy;
    $('stop').disabled = !(state === 'streaming' || state === 'starting');
    $('mic').classList.toggle('active', busy && current && current.kind === 'mic');
  },
  error(err) {
    const box = $('error');
    if (!err) {
      box.hidden = true;
      box.textContent = '';
      delete box.dataset.code;
      return;
    }
    // The service's {code, message}; a DOMException (the microphone refused, say) has a name instead.
    const code = typeof err.code === 'string' ? err.code : err.name || 'error';
    box.textContent = `${code}: ${err.message || err}`;
    box.hidden = false;
    box.dataset.code = code;
  },
  clear() {
    $('sentences').replaceChildren();
    $('partials').replaceChildren();
    $('final').textContent = '';
    $('final-meta').textContent = '';
    $('progress').textContent = '';
    $('session').textContent = '';
    ui.error(null);
  },
  stamp(text) {
    const t = document.createElement('time');
    t.textContent = text;
    return t;
  },
  partial(data) {
    if (!data.text) return;
    const span = document.createElement('span');
    span.className = 'partial';
    span.dataset.samples = data.samples_processed;
    span.append(ui.stamp(`${seconds(data.samples_processed / RATE)} s`), data.text);
    $('partials').append(span);
  },
  // A sentence replaces the partials before it: the service sends it right after the partial of the stride that
  // ended it, so every partial shown so far is of its stretch of audio (docs/api.md).
  sentence(data) {
    const p = document.createElement('p');
    p.className = 'sentence';
    p.dataset.index = data.index;
    p.append(ui.stamp(`${seconds(data.start_ms / 1000)}–${seconds(data.end_ms / 1000)} s`), data.text);
    $('sentences').append(p);
    $('partials').replaceChildren();
  },
  final(data) {
    $('final').textContent = data.text;
    $('final-meta').textContent =
      `${seconds(data.samples_processed / RATE)} s of audio, ${data.tokens.length} tokens, ${data.reason}`;
  },
};

let current = null; // the running stream: {kind, id, sender, events, stopped, ended, stopHooks}

function subscribe(id, handlers) {
  const key = apiKey();
  // EventSource cannot set headers: the key goes as a query parameter here.
  const url = `/v1/sessions/${id}/events` + (key ? `?api_key=${encodeURIComponent(key)}` : '');
  const events = new EventSource(url);
  let opened = false;
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new ApiError(0, 'events_timeout', 'the event stream did not open')), 15000);
    events.addEventListener('open', () => { opened = true; clearTimeout(timer); resolve(); });
    events.addEventListener('error', async (event) => {
      if (event.data) return; // the service's own `error` event, below
      if (events.readyState !== EventSource.CLOSED) {
        $('status').textContent = 'Event stream interrupted; reconnecting…';
        return;
      }
      clearTimeout(timer);
      // EventSource hides the answer; ask the session itself what is wrong (404, 401...).
      let err = new ApiError(0, 'events_failed', 'the event stream closed unexpectedly');
      try {
        await api(`/v1/sessions/${id}`, { method: 'GET' });
      } catch (e) {
        err = e;
      }
      if (opened) handlers.failed(err);
      else reject(err);
    });
  });
  const data = (event) => JSON.parse(event.data);
  events.addEventListener('partial', (e) => handlers.partial(data(e)));
  events.addEventListener('sentence', (e) => handlers.sentence(data(e)));
  events.addEventListener('gap', (e) => ui.error({ code: 'history_lost', message: `${data(e).missed} events were lost` }));
  events.addEventListener('final', (e) => { events.close(); handlers.final(data(e)); });
  events.addEventListener('error', (e) => {
    if (!e.data) return;
    events.close();
    handlers.failed(data(e));
  });
  return { events, ready };
}

// Open a session, subscribe, then run `source(stream)`, which pushes audio until it ends or is stopped.
async function run(kind, source) {
  ui.clear();
  current = { kind, stopped: false, stopHooks: [] };
  const stream = current;
  ui.state('starting', 'Opening a session…');
  try {
    const options = { sample_rate: RATE };
    if ($('mode').value) options.mode = $('mode').value;
    if ($('hotwords').value.trim()) options.hotwords = $('hotwords').value.trim();
    const session = await api('/v1/sessions', { json: options });
    stream.id = session.id;
    $('session').textContent = session.id;
    stream.done = new Promise((resolve) => { stream.finish = resolve; });
    const end = () => {
      stream.ended = true;
      halt(stream); // an idle timeout or a failure ends the session while audio may still be coming
      stream.finish();
    };
    const sub = subscribe(session.id, {
      partial: ui.partial,
      sentence: ui.sentence,
      final: (data) => {
        ui.final(data);
        ui.state('done', 'Done.');
        end();
      },
      failed: (err) => {
        ui.error(err);
        ui.state('error', 'Failed.');
        end();
      },
    });
    stream.events = sub.events;
    await sub.ready;
    stream.sender = new AudioSender(session.id);
    stream.sender.onError = () => halt(stream); // drain() below reports it
    ui.state('streaming', kind === 'mic' ? 'Listening…' : 'Streaming the file…');
    if (!stream.stopped) await source(stream);
    if (!stream.ended) ui.state('closing', 'Closing: waiting for the final transcript…');
    let closeError = null;
    try {
      await stream.sender.drain();
    } finally {
      if (!stream.ended) await api(`/v1/sessions/${session.id}/close`).catch((err) => { closeError = err; });
    }
    if (closeError && !stream.ended) throw closeError;
    await stream.done;
  } catch (err) {
    if (!stream.ended) {
      ui.error(err);
      ui.state('error', 'Failed.');
    }
    if (stream.events) stream.events.close();
    // Do not leave the session open until its idle timeout (closing twice is harmless).
    if (stream.id && !stream.ended) api(`/v1/sessions/${stream.id}/close`).catch(() => {});
  } finally {
    halt(stream);
    if (current === stream) current = null;
    ui.state(document.body.dataset.state); // the buttons follow
  }
}

function halt(stream) {
  stream.stopped = true;
  for (const hook of stream.stopHooks.splice(0)) hook();
}

function stop() {
  if (current) halt(current);
}

// ---------- the microphone ----------

async function microphone(stream) {
  if (!navigator.mediaDevices || !window.AudioWorkletNode) {
    throw new ApiError(0, 'no_microphone', 'this page needs a secure origin (https or localhost) for the microphone');
  }
  const media = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const context = new AudioContext();
  try {
    await context.audioWorklet.addModule('/static/pcm-worklet.js');
    const input = context.createMediaStreamSource(media);
    const node = new AudioWorkletNode(context, 'pcm-worklet', {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { targetRate: RATE, frameSamples: FRAME },
    });
    let captured = 0;
    let flushed;
    const tail = new Promise((resolve) => { flushed = resolve; });
    node.port.onmessage = (event) => {
      if (event.data === 'flushed') return flushed();
      captured += event.data.length;
      $('progress').textContent = `${seconds(captured / RATE)} s captured (${context.sampleRate} Hz → 16 kHz)`;
      stream.sender.push(event.data);
    };
    input.connect(node);
    node.connect(context.destination); // its output is silence; being connected keeps it rendering
    await context.resume();
    await new Promise((resolve) => {
      if (stream.stopped) return resolve();
      stream.stopHooks.push(resolve);
    });
    input.disconnect();
    node.port.postMessage('flush');
    await Promise.race([tail, sleep(1000)]);
    node.disconnect();
  } finally {
    for (const track of media.getTracks()) track.stop();
    await context.close();
  }
}

// ---------- a file ----------

// Any format the browser decodes, resampled to 16 kHz by decodeAudioData in a 16 kHz OfflineAudioContext and mixed
// down to mono. A 16 kHz mono 16-bit WAV comes through sample for sample.
async function decodeFile(file) {
  const bytes = await file.arrayBuffer();
  const context = new OfflineAudioContext(1, 1, RATE);
  const buffer = await context.decodeAudioData(bytes);
  const n = buffer.length;
  const mono = new Float32Array(n);
  for (let c = 0; c < buffer.numberOfChannels; c++) {
    const channel = buffer.getChannelData(c);
    for (let i = 0; i < n; i++) mono[i] += channel[i];
  }
  const pcm = new Int16Array(n);
  const scale = 32768 / buffer.numberOfChannels;
  for (let i = 0; i < n; i++) {
    const s = Math.round(mono[i] * scale);
    pcm[i] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
  }
  return pcm;
}

async function streamFile(stream, pcm, fast) {
  const total = seconds(pcm.length / RATE);
  const start = performance.now();
  for (let i = 0, at = 0; at < pcm.length && !stream.stopped; i++, at += FRAME) {
    if (!fast) {
      const wait = start + i * FRAME_MS - performance.now();
      if (wait > 0) await sleep(wait);
      if (stream.stopped) break;
    }
    stream.sender.push(pcm.subarray(at, at + FRAME));
    $('progress').textContent = `${seconds(Math.min(at + FRAME, pcm.length) / RATE)} / ${total} s sent`;
  }
}

// ---------- wiring ----------

$('key').value = localStorage.getItem(KEY_STORE) || '';
$('key').addEventListener('input', () => {
  if ($('key').value) localStorage.setItem(KEY_STORE, $('key').value);
  else localStorage.removeItem(KEY_STORE);
});

$('mic').addEventListener('click', () => run('mic', microphone));
$('stop').addEventListener('click', stop);
$('file').addEventListener('change', async () => {
  const file = $('file').files[0];
  if (!file) return;
  ui.clear();
  ui.state('starting', `Decoding ${file.name}…`);
  let pcm;
  try {
    pcm = await decodeFile(file);
  } catch (err) {
    ui.error({ code: 'undecodable_file', message: `${file.name}: the browser cannot decode it (${err.message || err})` });
    ui.state('error', 'Failed.');
    $('file').value = '';
    return;
  }
  const fast = $('fast').checked;
  await run('file', (stream) => streamFile(stream, pcm, fast));
  $('file').value = ''; // picking the same file again starts again
});

ui.state('idle');
