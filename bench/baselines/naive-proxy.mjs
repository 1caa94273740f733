// The naive Node TCP proxy every benchmark of a Node proxy should beat: two pipes per pair.
//   node naive-proxy.mjs LISTEN_HOST:PORT UPSTREAM_HOST:PORT
import net from 'node:net';

const [listenArg, upstreamArg] = process.argv.slice(2);
if (!listenArg || !upstreamArg) {
  console.error('usage: node naive-proxy.mjs LISTEN_HOST:PORT UPSTREAM_HOST:PORT');
  process.exit(2);
}
const split = (hostPort) => {
  const i = hostPort.lastIndexOf(':');
  return { host: hostPort.slice(0, i), port: Number(hostPort.slice(i + 1)) };
};
const listen = split(listenArg);
const upstream = split(upstreamArg);

const server = net.createServer((client) => {
  const up = net.connect(upstream.port, upstream.host);
  client.pipe(up);
  up.pipe(client);
  const destroyBoth = () => {
    client.destroy();
    up.destroy();
  };
  client.on('error', destroyBoth);
  up.on('error', destroyBoth);
  client.on('close', destroyBoth);
  up.on('close', destroyBoth);
});
server.listen({ host: listen.host, port: listen.port, backlog: 65535 }, () => console.log(`listening ${listenArg}`));
process.on('SIGTERM', () => process.exit(0));
