import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { BadResponseError, RemoteError, UnreachableError } from '../../src/client/errors.js';
import { httpRequest } from '../../src/client/http.js';

describe('node:http transport', () => {
  let server: Server;
  let base: string;
  const seen: Array<{ url: string; auth?: string }> = [];
  before(async () => {
    server = createServer((req, res) => {
      seen.push({
        url: req.url ?? '',
        ...(req.headers.authorization ? { auth: req.headers.authorization } : {}),
      });
      if (req.url === '/ok') return res.end('hello');
      if (req.url === '/redirect') {
        res.writeHead(302, { location: '/ok' });
        return res.end();
      }
      if (req.url === '/loop') {
        res.writeHead(301, { location: '/loop' });
        return res.end();
      }
      if (req.url === '/big') {
        // no content-length: the cap applies while reading
        res.writeHead(200, { 'transfer-encoding': 'chunked' });
        res.write(Buffer.alloc(600));
        return res.end(Buffer.alloc(600));
      }
      if (req.url === '/slow-body') {
        res.writeHead(200, { 'content-length': '100' });
        res.write('x'); // and never the rest
        return;
      }
      if (req.url === '/busy') {
        res.writeHead(503, { 'retry-after': '7' });
        return res.end('{"error":"pool full"}');
      }
      res.writeHead(404);
      res.end('{"error":"no such thing","code":"NOT_FOUND"}');
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => {
    server.closeAllConnections();
    server.close();
  });
  const opts = { timeoutMs: 1000, headers: { authorization: 'Bearer t' } };

  test('a 200 body, kept-alive connections, redirects followed within the origin', async () => {
    for (let i = 0; i < 3; i++) {
      assert.equal((await httpRequest(new URL('/ok', base), { maxBytes: 100 }, opts)).toString(), 'hello');
    }
    seen.length = 0;
    assert.equal(
      (await httpRequest(new URL('/redirect', base), { maxBytes: 100 }, opts)).toString(),
      'hello',
    );
    assert.deepEqual(seen, [
      { url: '/redirect', auth: 'Bearer t' },
      { url: '/ok', auth: 'Bearer t' },
    ]);
    await assert.rejects(httpRequest(new URL('/loop', base), { maxBytes: 100 }, opts), (e) => {
      return (
        e instanceof UnreachableError && e.check === 'http.network' && /too many redirects/.test(e.message)
      );
    });
  });

  test('caps, deadlines and statuses are typed', async () => {
    await assert.rejects(
      httpRequest(new URL('/big', base), { maxBytes: 1000 }, opts),
      (e) => e instanceof BadResponseError && e.check === 'response.too-large',
    );
    const t0 = performance.now();
    await assert.rejects(
      httpRequest(new URL('/slow-body', base), { maxBytes: 1000, timeoutMs: 200 }, opts),
      (e) => e instanceof UnreachableError && e.check === 'http.timeout',
    );
    assert.ok(performance.now() - t0 < 900);
    await assert.rejects(
      httpRequest(new URL('/busy', base), { maxBytes: 1000 }, opts),
      (e) => e instanceof UnreachableError && e.check === 'http.unavailable' && e.retryAfterSeconds === 7,
    );
    await assert.rejects(
      httpRequest(new URL('/missing', base), { maxBytes: 1000 }, opts),
      (e) =>
        e instanceof RemoteError &&
        e.status === 404 &&
        e.remoteCode === 'NOT_FOUND' &&
        /no such thing/.test(e.message),
    );
    // the server is still fine for the next request on a fresh or reused connection
    assert.equal((await httpRequest(new URL('/ok', base), { maxBytes: 100 }, opts)).toString(), 'hello');
  });
});

test('a GET on a kept-alive socket the server reset before answering is sent again on a new one', async () => {
  // Each connection answers its first request (keeping the connection open) and resets itself on
  // its second, as a server does that closes an idle socket just as a client reuses it.
  const { createServer: createTcpServer } = await import('node:net');
  let connections = 0;
  const open = new Set<import('node:net').Socket>();
  const server = createTcpServer((sock) => {
    connections++;
    open.add(sock);
    sock.on('close', () => open.delete(sock));
    let requests = 0;
    let buffered = '';
    sock.on('data', (d: Buffer) => {
      buffered += d.toString('latin1');
      while (buffered.includes('\r\n\r\n')) {
        buffered = buffered.slice(buffered.indexOf('\r\n\r\n') + 4);
        requests++;
        if (requests === 1)
          sock.write('HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: keep-alive\r\n\r\nok');
        else sock.resetAndDestroy();
      }
    });
    sock.on('error', () => {});
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const url = new URL(`http://127.0.0.1:${(server.address() as AddressInfo).port}/x`);
  try {
    const opts = { timeoutMs: 5000 };
    assert.equal((await httpRequest(url, { maxBytes: 100 }, opts)).toString(), 'ok');
    assert.equal((await httpRequest(url, { maxBytes: 100 }, opts)).toString(), 'ok');
    assert.equal(connections, 2, 'the second GET went out on the kept-alive socket, then on a new one');
  } finally {
    server.close();
    for (const sock of open) sock.destroy();
  }
});
