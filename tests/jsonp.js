// Evaluate a JSONP report file the way a browser's <script> would, in a fresh V8 context,
// and print the single argument its callback received, as JSON.
// Usage: node tests/jsonp.js FILE CALLBACK
const fs = require('fs');
const vm = require('vm');
const [file, callback] = process.argv.slice(2);
const calls = [];
const context = {};
const parts = callback.split('.');
let target = context;
for (const part of parts.slice(0, -1)) target = target[part] = {};
target[parts[parts.length - 1]] = (...args) => calls.push(args);
vm.runInNewContext(fs.readFileSync(file, 'utf8'), context, { filename: file });
if (calls.length !== 1 || calls[0].length !== 1) throw new Error(`callback called ${calls.length} times`);
process.stdout.write(JSON.stringify(calls[0][0]));
