// A lean HTTP/1.1 load client for GET requests: keep-alive connections over node:net, one request
// in flight on each, answers framed by Content-Length. It spends a few microseconds per answer where
// autocannon spends tens, which matters when the load tool shares 2 cores with the node it measures
// and with PostgreSQL. It speaks only what a trustix node answers (no chunked bodies).
import { connect, type Socket } from 'node:net';

export interface LoadResult {
  answers: number;
  seconds: number;
  non2xx: number;
  errors: number;
  p50_ms: number;
  p99_ms: number;
}

export interface LoadOptions {
  connections: number;
  /** Stop after this many requests in all, or after this many seconds. */
  amount?: number;
  seconds?: number;
  /** The path of request number `i`. */
  path(i: number): string;
  /** Called with each answer (its request number). */
  onAnswer?(i: number, status: number, body: Buffer): void;
}

const HEADER_END = Buffer.from('\r\n\r\n');

export async function load(base: string, o: LoadOptions): Promise<LoadResult> {
  const url = new URL(base);
  const host = url.hostname;
  const port = Number(url.port);
  const latencies: number[] = [];
  let sent = 0;
  let answers = 0;
  let non2xx = 0;
  let errors = 0;
  const start = performance.now();
  const deadline = o.seconds === undefined ? Number.POSITIVE_INFINITY : start + o.seconds * 1000;
  const more = () => (o.amount === undefined || sent < o.amount) && performance.now() < deadline;

  const run = (): Promise<void> =>
    new Promise((resolve) => {
      const socket: Socket = connect({ host, port, noDelay: true });
      let buf: Buffer = Buffer.alloc(0);
      let current = -1;
      let sentAt = 0;
      const next = () => {
        if (!more()) {
          socket.end();
          resolve();
          return;
        }
        current = sent++;
        sentAt = performance.now();
        socket.write(`GET ${o.path(current)} HTTP/1.1\r\nHost: ${url.host}\r\n\r\n`);
      };
      socket.on('connect', next);
      socket.on('error', () => {
        errors++;
        resolve();
      });
      socket.on('data', (d: Buffer) => {
        buf = buf.length === 0 ? d : Buffer.concat([buf, d]);
        const end = buf.indexOf(HEADER_END);
        if (end < 0) return;
        const head = buf.toString('latin1', 0, end);
        const m = /\r\ncontent-length: *(\d+)/i.exec(head);
        const length = m ? Number(m[1]) : 0;
        if (buf.length < end + 4 + length) return;
        const status = Number(head.slice(9, 12));
        const body = buf.subarray(end + 4, end + 4 + length);
        buf = buf.subarray(end + 4 + length);
        latencies.push(performance.now() - sentAt);
        answers++;
        if (status < 200 || status > 299) non2xx++;
        o.onAnswer?.(current, status, body);
        next();
      });
    });

  await Promise.all(Array.from({ length: o.connections }, run));
  const seconds = (performance.now() - start) / 1000;
  latencies.sort((a, b) => a - b);
  const pct = (p: number) => Math.round((latencies[Math.floor((latencies.length - 1) * p)] ?? 0) * 100) / 100;
  return { answers, seconds, non2xx, errors, p50_ms: pct(0.5), p99_ms: pct(0.99) };
}
