// Express 4 upstream for tests/frameworks.rs: default settings (case-insensitive routing),
// method-override from X-HTTP-Method-Override, an /admin/* handler and a fallback. Counts the
// requests it ran (GET /__seen, asked directly). Run: node app.js PORT.
'use strict';

const express = require('express');
const methodOverride = require('method-override');
// Express's own cookie reader (the `cookie` package it depends on), as cookie-parser uses it.
const cookie = require('cookie');

const app = express();
let ran = 0;

app.get('/__seen', (req, res) => res.json({ count: ran }));
app.use((req, res, next) => {
  ran += 1;
  next();
});
app.use(methodOverride('X-HTTP-Method-Override'));

const answer = (handler) => (req, res) =>
  res.json({
    framework: 'express',
    handler,
    method: req.method,
    path: req.path,
    abilities: req.headers['x-token-abilities'] ?? null,
    headers: req.headers,
    cookies: cookie.parse(req.headers.cookie ?? ''),
  });
app.all('/admin/*', answer('admin'));
app.all('*', answer('fallback'));

app.listen(Number(process.argv[2]), '127.0.0.1');
