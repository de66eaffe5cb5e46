/**
 * Gossip (docs/misbehaviour.md): a user compares the latest checkpoint it verified of a log with
 * the ones witnesses hold, so a log that shows this user one tree and the witnesses another (a
 * split view) is caught even when it is honest with the witnesses. For each witness:
 *
 * 1. fetch its latest cosigned checkpoint of the log: `GET <url>/<hex SHA-256 of the origin>/checkpoint`
 *    (a Trustix witness extension; tlog-witness has no read API). 404: it holds none.
 * 2. check it against the user's (LogClient.crossCheck: the log's signature, then one root per
 *    size or the log's own consistency proof between the sizes). A contradiction is a ForkError
 *    with a misbehaviour proof, written to the client's proof directory.
 * 3. send the user's checkpoint when it is not older than the witness's: `POST <url>/add-checkpoint`
 *    from the witness's size with the log's proof (tlog-witness v1.0.0), so the witness cosigns it,
 *    or refuses it and keeps its own record of the fork.
 */
import { createHash } from 'node:crypto';
import type { LogClient, TrustedCheckpoint } from '../client/client.js';
import { ForkError, UnprovenGrowthError } from '../client/errors.js';
import { TrustixError, VerificationError } from '../core/errors.js';

export interface GossipPeer {
  /** For people: the policy's witness name, or the URL. */
  name: string;
  /** The witness's URL prefix (where `add-checkpoint` is). */
  url: string;
}

export type GossipStatus = 'agree' | 'split-view' | 'unproven' | 'none' | 'error';

export interface GossipOutcome {
  origin: string;
  peer: string;
  /**
   * agree: the two checkpoints are one tree, or one extends the other by the log's proof;
   * split-view: they cannot both be true (`proofFile`); unproven: the log does not prove the
   * link; none: the peer holds no checkpoint of the log; error: the peer or the log could not
   * be asked, or the peer's checkpoint does not verify.
   */
  status: GossipStatus;
  message: string;
  yourSize?: number;
  theirSize?: number;
  proofFile?: string;
  /** What the peer answered to the user's checkpoint: `200`, `409`, `422 <reason>`... */
  sent?: string;
}

export interface GossipOptions {
  timeoutMs: number;
  fetch?: typeof globalThis.fetch;
}

function peerUrl(peer: GossipPeer, path: string): string {
  return `${peer.url.replace(/\/+$/, '')}/${path}`;
}

async function request(
  url: string,
  init: RequestInit,
  opts: GossipOptions,
): Promise<{ status: number; body: string }> {
  const f = opts.fetch ?? globalThis.fetch;
  const res = await f(url, { ...init, signal: AbortSignal.timeout(opts.timeoutMs) });
  return { status: res.status, body: await res.text() };
}

/** The peer's latest cosigned checkpoint of `origin`, or undefined when it holds none. */
export async function fetchPeerCheckpoint(
  peer: GossipPeer,
  origin: string,
  opts: GossipOptions,
): Promise<string | undefined> {
  const hash = createHash('sha256').update(origin).digest('hex');
  const r = await request(peerUrl(peer, `${hash}/checkpoint`), {}, opts);
  if (r.status === 404) return undefined;
  if (r.status !== 200) throw new Error(`${peer.url} answered ${r.status}: ${r.body.trim().slice(0, 200)}`);
  return r.body;
}

async function send(
  client: LogClient,
  peer: GossipPeer,
  yours: TrustedCheckpoint,
  theirSize: number,
  opts: GossipOptions,
): Promise<string> {
  const size = yours.checkpoint.size;
  const proof = theirSize === 0 || theirSize === size ? [] : await client.consistencyProof(theirSize, size);
  const body = `old ${theirSize}\n${proof.map((h) => `${h.toString('base64')}\n`).join('')}\n${yours.note}`;
  const r = await request(peerUrl(peer, 'add-checkpoint'), { method: 'POST', body }, opts);
  const said = r.body.trim().split('\n')[0].slice(0, 200);
  // a mirror takes it as its pending checkpoint and answers no cosignature (tlog-mirror)
  if (r.status === 200) return r.body.trim() === '' ? '200 accepted' : '200 cosigned';
  return `${r.status} ${said}`;
}

/** Gossips one log's checkpoint with one peer. Never throws. */
export async function gossipWith(
  client: LogClient,
  peer: GossipPeer,
  opts: GossipOptions,
): Promise<GossipOutcome> {
  const out: GossipOutcome = { origin: client.origin, peer: peer.name, status: 'error', message: '' };
  try {
    const theirs = await fetchPeerCheckpoint(peer, client.origin, opts);
    let yours: TrustedCheckpoint;
    let theirSize = 0;
    if (theirs === undefined) {
      yours = (await client.trusted()) ?? (await client.checkpoint());
      out.status = 'none';
      out.message = 'it holds no checkpoint of this log';
    } else {
      try {
        const r = await client.crossCheck(theirs);
        yours = r.trusted;
        theirSize = r.theirs.checkpoint.size;
        out.status = 'agree';
        out.message = 'one tree';
      } catch (err) {
        if (err instanceof ForkError) {
          out.status = 'split-view';
          out.message = err.message;
          out.yourSize = err.trustedSize;
          out.theirSize = err.presentedSize;
          if (err.proofFile !== undefined) out.proofFile = err.proofFile;
          const mine = await client.trusted();
          // the peer keeps its own record when it is shown the other tree at or above its size
          if (mine && mine.checkpoint.size >= err.presentedSize)
            out.sent = await send(client, peer, mine, err.presentedSize, opts).catch((e) => `not sent: ${e}`);
          return out;
        }
        if (err instanceof UnprovenGrowthError) {
          out.status = 'unproven';
          out.message = err.message;
          return out;
        }
        throw err;
      }
    }
    out.yourSize = yours.checkpoint.size;
    if (theirs !== undefined) out.theirSize = theirSize;
    if (yours.checkpoint.size > theirSize) out.sent = await send(client, peer, yours, theirSize, opts);
    return out;
  } catch (err) {
    out.status = 'error';
    out.message =
      err instanceof VerificationError
        ? `${err.check}: ${err.message}`
        : err instanceof TrustixError || err instanceof Error
          ? err.message
          : String(err);
    return out;
  }
}
