import { describe, expect, it } from 'vitest';
import net from 'node:net';
import { httpRouteConfig, rawRequest, request, startRoute, startUpstream } from '../helpers/http.js';

describe('smoke', () => {
  it('proxies', async () => {
    const upstream = await startUpstream((req, res) => { req.resume(); req.on('end', () => res.end('hi ' + req.url)); });
    const route = await startRoute(httpRouteConfig(`protocol: http\nupstream: ${upstream.url}\npool: { maxSockets: 2 }`));
    const s = net.connect(route.port, '127.0.0.1'); const t0 = Date.now();
    s.on('data', d => console.log('data', Date.now()-t0, JSON.stringify(d.toString())));
    s.on('end', () => console.log('end', Date.now()-t0)); s.on('close', () => console.log('close', Date.now()-t0));
    s.write('GET /y HTTP/1.0\r\n\r\n');
    await new Promise(r => setTimeout(r, 1000));
    console.log(route.route.connections());
    await route.close(); await upstream.close();
  });
});
