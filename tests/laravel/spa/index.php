<?php
// A small Laravel app for the browser test of tokengate in front of a Laravel app
// (tests/laravel_browser.rs, e2e/laravel-spa.mjs): served by PHP's own server with this
// file as its router script,
//
//   DB_URL=postgres://… APP_KEY=base64:… php -S 127.0.0.1:PORT tests/laravel/spa/index.php
//
// Every request runs in a fresh Laravel 8.83 application (../app.php: Debian's
// php-laravel-framework, the config of a new app, the same settings from the environment as
// ../session.php, whose `migrate` makes the sessions table) and goes through Laravel's own
// Router with the `web` middleware group of a new app's app/Http/Kernel.php, as far as
// sessions go: EncryptCookies, StartSession, VerifyCsrfToken. So the session cookie, the
// sessions row, the login (SessionGuard) and the XSRF-TOKEN cookie are Laravel's own.
//
//   GET  /login       the login form, with the session's CSRF token as `_token`
//   POST /login       user@example.com / secret: user 42 logged in (SessionGuard::login),
//                     the session regenerated, a redirect to /dashboard (as Breeze does)
//   GET  /dashboard   who Laravel and tokengate say is logged in, and a button whose script
//                     POSTs to /api/notes as Axios does (the XSRF-TOKEN cookie, decoded,
//                     in X-XSRF-TOKEN), showing the answer
//   POST /api/notes   JSON: the note, Laravel's user, the identity headers tokengate added
//                     and the request's CSRF-related headers
//   POST /logout      the user logged out, the session invalidated, a redirect to /login
//
// The app does not check who is logged in before its pages (no `auth` middleware):
// tokengate does. A page that finds no user answers 403 saying so, which the test would
// see. Laravel's own CSRF refusal (TokenMismatchException) is a 419 whose JSON says
// `"refused_by": "laravel"`, so that it differs from tokengate's 419.
require __DIR__ . '/../app.php';

use Illuminate\Auth\GenericUser;
use Illuminate\Cookie\Middleware\EncryptCookies;
use Illuminate\Foundation\Application;
use Illuminate\Foundation\Http\Middleware\VerifyCsrfToken;
use Illuminate\Http\JsonResponse;
use Illuminate\Http\RedirectResponse;
use Illuminate\Http\Request;
use Illuminate\Http\Response;
use Illuminate\Routing\Router;
use Illuminate\Session\Middleware\StartSession;
use Illuminate\Session\TokenMismatchException;
use Symfony\Component\HttpKernel\Exception\HttpExceptionInterface;

const USER_ID = 42;
const EMAIL = 'user@example.com';
const PASSWORD = 'secret';

/** app.php's settings errors: this app cannot start (a 500 saying why). */
function usage(string $why): never
{
    throw new RuntimeException("spa/index.php: $why");
}

/** An HTML page. */
function page(string $title, string $body, int $status = 200): Response
{
    $title = e($title);
    $html = <<<HTML
    <!doctype html>
    <html lang="en">
    <head>
    <meta charset="utf-8">
    <title>$title</title>
    <style>
    body { font: 16px/1.5 system-ui, sans-serif; max-width: 40rem; margin: 2rem auto; padding: 0 1rem; }
    dt { font-weight: bold; } dd { margin: 0 0 .5rem 0; font-family: monospace; }
    pre { background: #f4f4f4; padding: 1rem; white-space: pre-wrap; word-break: break-all; }
    label { display: block; margin: .5rem 0; } button { margin: .5rem 0; }
    </style>
    </head>
    <body>
    <h1>$title</h1>
    $body
    </body>
    </html>
    HTML;
    return new Response($html, $status, ['Content-Type' => 'text/html; charset=UTF-8']);
}

/** The login form, with the session's CSRF token. */
function login_form(Request $request, string $error = ''): string
{
    $token = e($request->session()->token());
    $error = $error === '' ? '' : '<p id="error" role="alert">' . e($error) . '</p>';
    return <<<HTML
    $error
    <form method="POST" action="/login">
    <input type="hidden" name="_token" value="$token">
    <label>Email <input id="email" type="email" name="email" required></label>
    <label>Password <input id="password" type="password" name="password" required></label>
    <button id="login" type="submit">Log in</button>
    </form>
    HTML;
}

/** The identity headers tokengate added to this request (null: not there). */
function identity(Request $request): array
{
    return [
        'x_auth_user' => $request->header('X-Auth-User'),
        'x_auth_method' => $request->header('X-Auth-Method'),
        'x_token_abilities' => $request->header('X-Token-Abilities'),
    ];
}

/** The routes of the app, all in the `web` middleware group. */
function routes(Router $router, Application $app): void
{
    $auth = fn () => $app['auth']->guard();

    $router->get('/login', fn (Request $request) => page('Log in', login_form($request)));

    $router->post('/login', function (Request $request) use ($auth) {
        // As Breeze's AuthenticatedSessionController::store: Auth::attempt (here one known
        // user), then the session regenerated and a redirect to the intended page.
        if ($request->input('email') !== EMAIL || $request->input('password') !== PASSWORD) {
            return page('Log in', login_form($request, 'These credentials do not match our records.'), 422);
        }
        $auth()->login(new GenericUser(['id' => USER_ID, 'remember_token' => null]));
        $request->session()->regenerate();
        return new RedirectResponse('/dashboard');
    });

    $router->get('/dashboard', function (Request $request) use ($auth) {
        $user = $auth()->id();
        if ($user === null) {
            return page('No user', '<p id="no-user">Laravel sees no user: this page should not have been reached.</p>', 403);
        }
        $seen = identity($request);
        $rows = '';
        foreach ([
            'laravel-user' => ['Laravel user', (string) $user],
            'auth-user' => ['X-Auth-User', $seen['x_auth_user']],
            'auth-method' => ['X-Auth-Method', $seen['x_auth_method']],
            'token-abilities' => ['X-Token-Abilities', $seen['x_token_abilities']],
        ] as $id => [$label, $value]) {
            $rows .= '<dt>' . e($label) . '</dt><dd id="' . $id . '">' . e($value ?? '(none)') . "</dd>\n";
        }
        $token = e($request->session()->token());
        // The request as Axios makes it in a Laravel app (resources/js/bootstrap.js sets
        // X-Requested-With): the XSRF-TOKEN cookie read and decodeURIComponent()ed by
        // axios/lib/helpers/cookies.js, sent as X-XSRF-TOKEN; Axios' default Accept; a JSON
        // body. The browser adds the cookies, Origin and Sec-Fetch-Site.
        $script = <<<'JS'
        function readCookie(name) {
          const match = document.cookie.match(new RegExp('(^|;\\s*)(' + name + ')=([^;]*)'));
          return match ? decodeURIComponent(match[3]) : null;
        }
        document.getElementById('add-note').addEventListener('click', async () => {
          const result = document.getElementById('result');
          result.removeAttribute('data-status');
          result.textContent = '…';
          try {
            const response = await fetch('/api/notes', {
              method: 'POST',
              credentials: 'same-origin',
              headers: {
                'X-XSRF-TOKEN': readCookie('XSRF-TOKEN'),
                'X-Requested-With': 'XMLHttpRequest',
                'Content-Type': 'application/json',
                'Accept': 'application/json, text/plain, */*',
              },
              body: JSON.stringify({ text: 'A note from the dashboard' }),
            });
            const text = await response.text();
            result.textContent = text;
            result.dataset.status = String(response.status);
          } catch (e) {
            result.textContent = 'request failed: ' + e;
            result.dataset.status = 'error';
          }
        });
        JS;
        return page('Dashboard', <<<HTML
        <dl>
        $rows</dl>
        <button id="add-note" type="button">Add a note</button>
        <pre id="result"></pre>
        <form method="POST" action="/logout">
        <input type="hidden" name="_token" value="$token">
        <button id="logout" type="submit">Log out</button>
        </form>
        <script>
        $script
        </script>
        HTML);
    });

    $router->post('/api/notes', function (Request $request) use ($auth) {
        $user = $auth()->id();
        if ($user === null) {
            return new JsonResponse(['message' => 'Laravel sees no user.'], 403);
        }
        return new JsonResponse([
            'note' => ['text' => $request->json('text')],
            'laravel_user' => $user,
        ] + identity($request) + [
            // What let the request through tokengate's CSRF rules.
            'sec_fetch_site' => $request->header('Sec-Fetch-Site'),
            'origin' => $request->header('Origin'),
            'x_xsrf_token' => $request->hasHeader('X-XSRF-TOKEN'),
        ]);
    });

    $router->post('/logout', function (Request $request) use ($auth) {
        // As Breeze's AuthenticatedSessionController::destroy.
        $auth()->logout();
        $request->session()->invalidate();
        $request->session()->regenerateToken();
        return new RedirectResponse('/login');
    });
}

try {
    $app = application(laravel_config());
    $request = Request::capture();
    $app->instance('request', $request);
    $router = $app['router'];
    $router->middlewareGroup('web', [EncryptCookies::class, StartSession::class, VerifyCsrfToken::class]);
    $router->group(['middleware' => 'web'], fn (Router $router) => routes($router, $app));
    $response = $router->dispatch($request);
} catch (TokenMismatchException $e) {
    $response = new JsonResponse(['message' => $e->getMessage(), 'refused_by' => 'laravel'], 419);
} catch (HttpExceptionInterface $e) {
    // No such route (404) or method (405).
    $response = new JsonResponse(['message' => get_class($e)], $e->getStatusCode(), $e->getHeaders());
} catch (Throwable $e) {
    error_log('spa/index.php: ' . $e);
    $response = new JsonResponse(['message' => get_class($e) . ': ' . $e->getMessage()], 500);
}
$response->send();
