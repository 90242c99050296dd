// AudioWorklet processor: the microphone's audio, at the AudioContext's rate, to 16 kHz PCM16 frames.
//
// Each render quantum (128 samples) is mixed down to mono and resampled with a windowed-sinc low-pass interpolator
// (cut-off at 95 % of the lower Nyquist, so nothing above 8 kHz folds into the speech band when downsampling from
// 44.1 or 48 kHz). Whole frames of `frameSamples` Int16 samples are posted to the main thread, which appends them to
// the session. The message 'flush' posts what is left (the tail, padded through the filter) and then 'flushed'.

class SincResampler {
  constructor(inRate, outRate, zeros = 16, oversample = 512) {
    this.step = inRate / outRate; // input samples per output sample
    this.identity = inRate === outRate;
    const scale = Math.min(1, outRate / inRate) * 0.95;
    this.half = zeros / scale; // half the filter's support, in input samples
    this.over = oversample;
    const n = Math.ceil(this.half * oversample) + 2;
    this.table = new Float32Array(n);
    for (let i = 0; i < n; i++) {
      const t = i / oversample;
      if (t >= this.half) break;
      const x = Math.PI * scale * t;
      const sinc = x === 0 ? 1 : Math.sin(x) / x;
      const hann = 0.5 * (1 + Math.cos(Math.PI * t / this.half));
      this.table[i] = scale * sinc * hann;
    }
    this.buf = new Float32Array(8192);
    this.len = Math.ceil(this.half); // zeros before the first sample: the filter's history at the start
    this.t = this.len; // the next output's position, in input samples from buf[0]
  }

  tap(d) {
    const p = Math.abs(d) * this.over;
    const i = Math.floor(p);
    if (i + 1 >= this.table.length) return 0;
    const f = p - i;
    return this.table[i] * (1 - f) + this.table[i + 1] * f;
  }

  // Append `input` (Float32Array) and call emit(y) for every output sample it completes.
  push(input, emit) {
    if (this.identity) {
      for (let i = 0; i < input.length; i++) emit(input[i]);
      return;
    }
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(Math.max(this.buf.length * 2, this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    while (this.t + this.half < this.len - 1) {
      const lo = Math.max(0, Math.ceil(this.t - this.half));
      const hi = Math.min(this.len - 1, Math.floor(this.t + this.half));
      let y = 0;
      for (let j = lo; j <= hi; j++) y += this.buf[j] * this.tap(this.t - j);
      emit(y);
      this.t += this.step;
    }
    const drop = Math.floor(this.t - this.half) - 1;
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.t -= drop;
    }
  }

  // The tail: run zeros through the filter so the last input samples come out.
  flush(emit) {
    if (!this.identity) this.push(new Float32Array(Math.ceil(this.half) + 2), emit);
  }
}

class PcmWorklet extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = options.processorOptions || {};
    this.size = opts.frameSamples || 1600;
    this.frame = new Int16Array(this.size);
    this.fill = 0;
    // `sampleRate` is the AudioContext's rate, a global of the AudioWorkletGlobalScope.
    this.resampler = new SincResampler(sampleRate, opts.targetRate || 16000);
    this.mono = new Float32Array(128);
    this.emit = (y) => {
      const s = Math.round(y * 32768);
      this.frame[this.fill++] = s > 32767 ? 32767 : s < -32768 ? -32768 : s;
      if (this.fill === this.size) {
        const full = this.frame;
        this.frame = new Int16Array(this.size);
        this.port.postMessage(full, [full.buffer]); // transferred: `full` is empty from here on
        this.fill = 0;
      }
    };
    this.port.onmessage = (event) => {
      if (event.data !== 'flush') return;
      this.resampler.flush(this.emit);
      if (this.fill > 0) this.port.postMessage(this.frame.slice(0, this.fill));
      this.fill = 0;
      this.port.postMessage('flushed');
    };
  }

  process(inputs) {
    const channels = inputs[0];
    if (channels && channels.length > 0) {
      const n = channels[0].length;
      if (this.mono.length !== n) this.mono = new Float32Array(n);
      const mono = this.mono;
      mono.set(channels[0]);
      for (let c = 1; c < channels.length; c++) {
        const ch = channels[c];
        for (let i = 0; i < n; i++) mono[i] += ch[i];
      }
      if (channels.length > 1) for (let i = 0; i < n; i++) mono[i] /= channels.length;
      this.resampler.push(mono, this.emit);
    }
    return true;
  }
}

registerProcessor('pcm-worklet', PcmWorklet);
