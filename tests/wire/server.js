// MongoDB wire-protocol server for Mongol's tests: in memory, loopback only.
// Usage: node server.js [port]   (port 0 or absent: any free port)
// Prints "listening on <port>" once it accepts connections; exits on SIGTERM
// or when its stdin closes, so it never outlives the test run that started it.
import { congodb } from '@push.rocks/smartmongo';

const server = new congodb.CongoServer({
  port: Number(process.argv[2] || 0),
  host: '127.0.0.1',
  storage: 'memory',
});
await server.start();
console.log(`listening on ${server.server.address().port}`);

const stop = async () => {
  await server.stop();
  process.exit(0);
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.resume();
