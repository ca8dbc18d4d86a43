'use strict';
// Preload (`node --require ./bind-loopback.cjs app.js`) that keeps every TCP
// server of the process on the loopback interface.
//
// Why: kinesis-local (kinesis-mock compiled with Scala.js) hard-codes host
// 0.0.0.0 for both of its servers, and fs2-io turns a wildcard host into
// `server.listen(port, cb)`, which Node binds to `::` (all interfaces, both
// families). It has no setting for the bind address, so we rewrite it here.
// http, https, tls and http2 servers all inherit net.Server.prototype.listen,
// so patching that one method covers every kind of TCP server.
//
// Rule: a listen() on a TCP port whose host is missing, a wildcard, or any
// non-loopback address is bound to LOOPBACK instead. Unix sockets, pipes and
// inherited handles/fds are left alone.

const net = require('net');

const LOOPBACK = process.env.BIND_LOOPBACK_HOST || '127.0.0.1';
const VERBOSE = process.env.BIND_LOOPBACK_QUIET !== '1';

function isLoopback(host) {
  if (typeof host !== 'string') return false;
  const h = host.replace(/^\[|\]$/g, '').toLowerCase();
  return h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h) ||
    /^::ffff:127\.\d+\.\d+\.\d+$/.test(h);
}

function note(from, port) {
  if (VERBOSE) {
    process.stderr.write(
      `bind-loopback: listen(${port === undefined ? '' : port}) host ` +
      `${from === undefined ? '(none)' : JSON.stringify(from)} -> ${LOOPBACK}\n`);
  }
}

const isPort = (v) => typeof v === 'number' || (typeof v === 'string' && /^\d+$/.test(v));

const originalListen = net.Server.prototype.listen;

net.Server.prototype.listen = function listen(...args) {
  const first = args[0];
  if (first !== null && typeof first === 'object') {
    // listen(options[, cb]) or listen(handle[, backlog][, cb])
    const isOptions = first.path === undefined && first.fd === undefined &&
      first.handle === undefined && first._handle === undefined;
    if (isOptions && !isLoopback(first.host)) {
      note(first.host, first.port);
      args[0] = Object.assign({}, first, { host: LOOPBACK });
    }
  } else if (first === undefined || typeof first === 'function') {
    // listen() or listen(cb): a random port on all interfaces.
    note(undefined, 0);
    args.splice(0, first === undefined ? 1 : 0, 0, LOOPBACK);
  } else if (isPort(first)) {
    // listen(port[, host][, backlog][, cb])
    const second = args[1];
    if (typeof second === 'string') {
      if (!isLoopback(second)) { note(second, first); args[1] = LOOPBACK; }
    } else if (second === undefined || second === null) {
      note(undefined, first);
      if (args.length >= 2) args[1] = LOOPBACK; else args.push(LOOPBACK);
    } else {
      // second is a backlog (number) or the callback
      note(undefined, first);
      args.splice(1, 0, LOOPBACK);
    }
  }
  // Anything else (a pipe path string) is not TCP: leave it alone.
  return originalListen.apply(this, args);
};
