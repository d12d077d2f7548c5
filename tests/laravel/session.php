<?php
// A Laravel app's own sessions, for the tests of tokengate's Laravel session source (issue 18):
// sessions created, ended and read by Laravel 8.83's own classes (Debian's
// php-laravel-framework, loaded without Composer), in the test's database or Redis, and the
// cookies a browser holds afterwards, exactly as the app's `web` middleware group sends them.
//
// Each HTTP request below goes through a fresh Illuminate\Foundation\Application with the
// service providers a Laravel app registers for these parts (encryption, cookie, session,
// auth, cache, redis) and the real middleware, in the order of the `web` group of a new app's
// app/Http/Kernel.php: EncryptCookies, StartSession, VerifyCsrfToken (AddQueuedCookiesToResponse,
// ShareErrorsFromSession and SubstituteBindings take no part in sessions and are left out).
// So the session row or key is written by Laravel's DatabaseSessionHandler or its
// CacheBasedSessionHandler over a RedisStore, the login by SessionGuard::login, the cookies
// by StartSession / VerifyCsrfToken and encrypted by EncryptCookies.
//
//   php session.php migrate
//   php session.php login USER_ID [--no-user-column] [--guard NAME]
//   php session.php logout SESSION_ID [--no-user-column]
//   php session.php clear-user SESSION_ID [--no-user-column]
//   php session.php expire SESSION_ID [--ago SECONDS]
//   php session.php show SESSION_ID
//   php session.php encrypt-cookie NAME VALUE
//   php session.php decrypt-cookie NAME VALUE
//   php session.php key
//
// Configuration, from the environment (the names are the Laravel .env ones):
//   APP_KEY               base64:… (the `key` command needs none)
//   APP_PREVIOUS_KEYS     optional, comma-separated base64:… keys (Laravel 11+, emulated below)
//   SESSION_CIPHER        AES-256-CBC (default), AES-128-CBC, AES-256-GCM, AES-128-GCM (config app.cipher)
//   SESSION_COOKIE        the session cookie's name, default laravel_session
//   SESSION_DRIVER        database (default) or redis
//   SESSION_TABLE         database driver: the table, default sessions
//   DB_URL                database driver: postgres://… or mysql://… (as an app's DATABASE_URL)
//   REDIS_URL             redis driver: redis://127.0.0.1:PORT[/DB] (config database.redis.default.url)
//   REDIS_PREFIX          redis driver: the connection's key prefix, default laravel_database_
//   CACHE_PREFIX          redis driver: the cache store's prefix, default laravel_cache
//   SESSION_SERIALIZATION php (default) or json (Laravel 9+, emulated below)
//   SESSION_ENCRYPT       0 (default) or 1: the payload encrypted (Laravel's EncryptedStore)
//   SESSION_LIFETIME      minutes, default 120
//
// The defaults are those of a Laravel 8 app named "Laravel" (laravel/laravel 8.x config
// files): session.cookie is Str::slug(APP_NAME, '_').'_session', cache.prefix
// Str::slug(APP_NAME, '_').'_cache', database.redis.options.prefix
// Str::slug(APP_NAME, '_').'_database_'. The session lottery is [0, 100] (a new app has
// [2, 100]): garbage collection would delete other tests' expired rows at random.
//
// The redis driver's key. SessionManager::createRedisDriver builds a CacheBasedSessionHandler
// over the `redis` cache store (a RedisStore whose prefix is cache.prefix plus ':', added by
// RedisStore::setPrefix in Laravel 8-10) on the session.connection Redis connection (null: the
// `default` one, so REDIS_DB, not the cache store's own REDIS_CACHE_DB), and phpredis adds the
// connection's prefix (Redis::OPT_PREFIX) to every key. So the key is
//   REDIS_PREFIX . CACHE_PREFIX . ':' . SESSION_ID   e.g. laravel_database_laravel_cache:Xk3…40 chars
// in database 0 (or the one in REDIS_URL's path), written with SETEX (TTL = lifetime * 60 s),
// and its value is RedisStore::serialize of the session string: PHP-serialized a second time,
//   s:123:"a:4:{s:6:"_token";…}";
// Laravel 11+ adds no ':' (RedisStore::setPrefix, laravel/framework#47380) and its default
// config has cache.prefix laravel_cache_ and the redis prefix laravel_database_ (Laravel 13:
// laravel-cache- and laravel-database-, #56172), so an 11/12 app's key is
// laravel_database_laravel_cache_<id>. 8.83's RedisStore adds the ':' to any non-empty
// prefix; for the key of a newer app, set CACHE_PREFIX to the empty string and the whole
// prefix in REDIS_PREFIX (REDIS_PREFIX=laravel_database_laravel_cache_): the same bytes.
//
// Each command prints one line of JSON on success; on failure a message on stderr and exit 1
// (2 for bad usage).
require __DIR__ . '/cli.php';
// The Laravel classes, the settings, database() and application(), shared with spa/index.php.
require __DIR__ . '/app.php';

use Illuminate\Auth\GenericUser;
use Illuminate\Contracts\Encryption\DecryptException;
use Illuminate\Cookie\CookieValuePrefix;
use Illuminate\Cookie\Middleware\EncryptCookies;
use Illuminate\Database\Schema\Blueprint;
use Illuminate\Encryption\Encrypter;
use Illuminate\Foundation\Application;
use Illuminate\Foundation\Http\Middleware\VerifyCsrfToken;
use Illuminate\Http\RedirectResponse;
use Illuminate\Http\Request;
use Illuminate\Http\Response;
use Illuminate\Pipeline\Pipeline;
use Illuminate\Routing\Route;
use Illuminate\Session\Middleware\StartSession;
use Illuminate\Session\Store;
use Symfony\Component\HttpFoundation\Cookie;

function fail(string $why): never
{
    throw new RuntimeException($why);
}

function out($value): void
{
    echo json_encode($value, JSON_UNESCAPED_SLASHES), "\n";
}

// ---------------------------------------------------------------------------------------
// Configuration.

[$args, $options] = parse_args(array_slice($argv, 1), ['no-user-column']);
$command = array_shift($args) ?? usage('no command');
$allowed = [
    'login' => ['no-user-column', 'guard'],
    'logout' => ['no-user-column'],
    'clear-user' => ['no-user-column'],
    'expire' => ['ago'],
];
foreach (array_keys($options) as $option) {
    if (!in_array($option, $allowed[$command] ?? [], true)) {
        usage("$command takes no --$option");
    }
}

$config = laravel_config();
$cipher = $config['app']['cipher'];
$driver = $config['session']['driver'];
$lifetime = $config['session']['lifetime'];


/**
 * A browser: its cookies (name → value as the Set-Cookie header had it, percent-encoded by
 * Symfony's Cookie) and the Set-Cookie headers of the last response.
 */
final class Browser
{
    public array $cookies = [];
    public array $setCookies = [];
    public ?Application $app = null;

    public function __construct(private array $config, private string $defaultGuard = 'web')
    {
    }

    /**
     * One request through the web middleware to `$controller`; returns the response. The
     * cookies go in as PHP hands them to an app ($_COOKIE: urldecode()d).
     */
    public function request(string $method, string $path, Closure $controller, array $input = [], array $headers = [])
    {
        $app = $this->app = application($this->config, $this->defaultGuard);
        $server = ['REMOTE_ADDR' => '127.0.0.1', 'HTTP_USER_AGENT' => 'tokengate tests (tests/laravel/session.php)'];
        foreach ($headers as $name => $value) {
            $server['HTTP_' . strtoupper(str_replace('-', '_', $name))] = $value;
        }
        $request = Request::create(
            "http://localhost$path",
            $method,
            $input,
            array_map('urldecode', $this->cookies),
            [],
            $server
        );
        $route = new Route([$method], ltrim($path, '/'), ['uses' => $controller]);
        $request->setRouteResolver(fn () => $route);
        $app->instance('request', $request);
        $response = (new Pipeline($app))
            ->send($request)
            ->through([EncryptCookies::class, StartSession::class, VerifyCsrfToken::class])
            ->then(fn ($request) => $controller($request, $app));
        $this->setCookies = [];
        foreach ($response->headers->getCookies() as $cookie) {
            $header = (string) $cookie;
            $this->setCookies[] = $header;
            $value = explode(';', explode('=', $header, 2)[1], 2)[0];
            if ($cookie->getValue() === '' || $cookie->getValue() === null) {
                unset($this->cookies[$cookie->getName()]);
            } else {
                $this->cookies[$cookie->getName()] = $value;
            }
        }
        return $response;
    }

    /** The session of the last request. */
    public function session(): Store
    {
        return $this->app['session.store'];
    }
}

/** What `login` and `logout` print about the session a browser now holds. */
function browser_state(Browser $browser, array $config): array
{
    $session = $browser->session();
    $xsrf = $browser->cookies['XSRF-TOKEN'] ?? null;
    return [
        'id' => $session->getId(),
        'csrf_token' => $session->token(),
        'cookie_name' => $config['session']['cookie'],
        // As the browser sends them back in its Cookie header.
        'cookie' => $browser->cookies[$config['session']['cookie']] ?? null,
        'xsrf_cookie' => $xsrf,
        // What Axios sends as X-XSRF-TOKEN: the cookie decodeURIComponent()ed.
        'xsrf_header' => $xsrf === null ? null : rawurldecode($xsrf),
        'set_cookie' => $browser->setCookies,
        'storage' => storage_name($browser->app, $session->getId()),
    ];
}

/** Where the session with this id is stored. */
function storage_name(Application $app, string $id): array
{
    $config = $app['config']['session'];
    if ($config['driver'] === 'database') {
        return ['driver' => 'database', 'table' => $config['table']];
    }
    [$connection, $key] = redis_key($app, $id);
    return [
        'driver' => 'redis',
        'key' => $connection->client()->getOption(\Redis::OPT_PREFIX) . $key,
        'database' => $connection->client()->getDbNum(),
    ];
}

/** The session's Redis connection and its key there (the connection adds its own prefix). */
function redis_key(Application $app, string $id): array
{
    $store = $app['session']->driver()->getHandler()->getCache()->getStore();
    return [$store->connection(), $store->getPrefix() . $id];
}

/**
 * A browser holding the session cookie of session `$id`, as EncryptCookies sent it, having
 * loaded a page (GET /home) so it holds the XSRF-TOKEN cookie too. Fails when there is no
 * such session.
 */
function browser_with_session(array $config, string $id, string $defaultGuard): Browser
{
    $browser = new Browser($config, $defaultGuard);
    $encrypter = application($config)['encrypter'];
    $browser->cookies[$config['session']['cookie']] = rawurlencode($encrypter->encrypt(
        CookieValuePrefix::create($config['session']['cookie'], $encrypter->getKey()) . $id,
        EncryptCookies::serialized($config['session']['cookie'])
    ));
    $browser->request('GET', '/home', function ($request) use ($id) {
        if ($request->session()->getId() !== $id || !$request->session()->has('_flash')) {
            fail("no session $id");
        }
        return new Response('home');
    });
    return $browser;
}

// ---------------------------------------------------------------------------------------
// The commands.

// DatabaseSessionHandler::addUserInformation writes the *default* guard's id to user_id on
// every save. With --no-user-column the default guard is one nobody logs into (an app whose
// default guard is not the one its browser users log in with), so user_id stays NULL while
// the payload has login_<guard>_… = the user. Give it to every command on such a session
// (the same app): a request with the `web` default guard would write user_id.
$defaultGuard = isset($options['no-user-column']) ? 'nobody' : 'web';

try {
    switch ($command) {
        case 'migrate':
            if ($args) {
                usage('migrate');
            }
            // `php artisan session:table` (Session/Console/stubs/database.stub, Laravel 8).
            $table = $config['session']['table'];
            $schema = database()->getConnection()->getSchemaBuilder();
            $created = false;
            if (!$schema->hasTable($table)) {
                $schema->create($table, function (Blueprint $table) {
                    $table->string('id')->primary();
                    $table->foreignId('user_id')->nullable()->index();
                    $table->string('ip_address', 45)->nullable();
                    $table->text('user_agent')->nullable();
                    $table->text('payload');
                    $table->integer('last_activity')->index();
                });
                $created = true;
            }
            out(['migrated' => $table, 'created' => $created]);
            break;

        case 'login':
            if (count($args) !== 1) {
                usage('login USER_ID [--no-user-column] [--guard NAME]');
            }
            // An integer id as Eloquent's incrementing key gives it (i:42; in the payload),
            // anything else (a UUID, a ULID) as a string.
            $user = ctype_digit($args[0]) && (string) (int) $args[0] === $args[0] ? (int) $args[0] : $args[0];
            $guard = $options['guard'] ?? 'web';
            if (!preg_match('/^[A-Za-z0-9_-]+$/', $guard)) {
                usage("--guard $guard: a guard name");
            }
            $config['auth']['guards'][$guard] = ['driver' => 'session', 'provider' => 'users'];
            $browser = new Browser($config, $defaultGuard);
            // The login page: a guest session (_token, _previous, _flash), the form with its
            // CSRF token.
            $browser->request('GET', '/login', fn ($request) => new Response('<form>' . csrf_token() . '</form>'));
            $token = $browser->session()->token();
            // POST /login as Breeze's AuthenticatedSessionController::store (laravel/ui and
            // Fortify alike): Auth::attempt() → SessionGuard::login (the login_<guard>_<sha1>
            // key, migrate(true): a new id, the guest session destroyed), then
            // $request->session()->regenerate() (another id, a new _token), and a redirect.
            $browser->request('POST', '/login', function ($request, $app) use ($guard, $user) {
                $app['auth']->guard($guard)->login(new GenericUser(['id' => $user, 'remember_token' => null]));
                $request->session()->regenerate();
                return new RedirectResponse('http://localhost/dashboard');
            }, ['_token' => $token, 'email' => 'user@example.com', 'password' => 'secret']);
            // The browser follows the redirect: the session is read back by the guard.
            $browser->request('GET', '/dashboard', function ($request, $app) use ($guard, $user) {
                $id = $app['auth']->guard($guard)->id();
                if ($id !== $user) {
                    fail('the guard does not see the logged-in user: ' . json_encode($id));
                }
                return new Response('dashboard');
            });
            out(['user' => $user, 'guard' => $guard] + browser_state($browser, $config));
            break;

        case 'logout':
            if (count($args) !== 1) {
                usage('logout SESSION_ID [--no-user-column]');
            }
            // An SPA's logout: the page loaded, then POST /logout with X-XSRF-TOKEN from the
            // XSRF-TOKEN cookie; the controller as Breeze's destroy (Auth::guard('web')->logout(),
            // invalidate(): the session destroyed, a new id; regenerateToken()).
            $browser = browser_with_session($config, $args[0], $defaultGuard);
            $xsrf = rawurldecode($browser->cookies['XSRF-TOKEN']);
            $browser->request('POST', '/logout', function ($request, $app) {
                $app['auth']->guard('web')->logout();
                $request->session()->invalidate();
                $request->session()->regenerateToken();
                return new RedirectResponse('http://localhost/');
            }, [], ['X-XSRF-TOKEN' => $xsrf, 'X-Requested-With' => 'XMLHttpRequest']);
            $state = browser_state($browser, $config);
            if ($state['id'] === $args[0]) {
                fail('the session id did not change');
            }
            // The browser then holds a new guest session (id …): its row or key exists.
            out(['destroyed' => $args[0]] + $state);
            break;

        case 'clear-user':
            if (count($args) !== 1) {
                usage('clear-user SESSION_ID [--no-user-column]');
            }
            // Auth::logout() without invalidating the session: the login key removed, the
            // session kept under the same id (user_id written as the default guard's id: NULL).
            $browser = browser_with_session($config, $args[0], $defaultGuard);
            $xsrf = rawurldecode($browser->cookies['XSRF-TOKEN']);
            $browser->request('POST', '/logout', function ($request, $app) {
                $app['auth']->guard('web')->logout();
                return new RedirectResponse('http://localhost/');
            }, [], ['X-XSRF-TOKEN' => $xsrf, 'X-Requested-With' => 'XMLHttpRequest']);
            $state = browser_state($browser, $config);
            if ($state['id'] !== $args[0]) {
                fail('the session id changed');
            }
            out(['user' => null] + $state);
            break;

        case 'expire':
            if (count($args) !== 1) {
                usage('expire SESSION_ID [--ago SECONDS]');
            }
            $id = $args[0];
            $app = application($config);
            if ($driver === 'database') {
                // DatabaseSessionHandler::expired: last_activity < now - lifetime. The row
                // stays (garbage collection would delete it later).
                $ago = $options['ago'] ?? (string) ($lifetime * 60 + 1);
                if (!ctype_digit($ago)) {
                    usage("--ago $ago: seconds");
                }
                $lastActivity = time() - (int) $ago;
                $rows = database()->getConnection()->table($config['session']['table'])->where('id', $id);
                // (Checked first: MySQL counts only changed rows as updated.)
                if (!$rows->exists()) {
                    fail("no session $id");
                }
                $rows->update(['last_activity' => $lastActivity]);
                out(['expired' => $id, 'last_activity' => $lastActivity]);
            } else {
                // The key's TTL runs out: set to 1 ms, then Redis expires it.
                if (isset($options['ago'])) {
                    usage('--ago is for the database driver');
                }
                [$connection, $key] = redis_key($app, $id);
                if (!$connection->pexpire($key, 1)) {
                    fail("no session $id");
                }
                $deadline = microtime(true) + 5;
                while ($connection->exists($key)) {
                    if (microtime(true) > $deadline) {
                        fail("key of session $id did not expire");
                    }
                    usleep(2000);
                }
                out(['expired' => $id] + storage_name($app, $id));
            }
            break;

        case 'show':
            if (count($args) !== 1) {
                usage('show SESSION_ID');
            }
            // The stored session as it is, and as Laravel's Store reads it.
            $id = $args[0];
            $app = application($config);
            if ($driver === 'database') {
                $row = database()->getConnection()->table($config['session']['table'])->where('id', $id)->first();
                $stored = $row === null ? null : [
                    'user_id' => $row->user_id === null ? null : (int) $row->user_id,
                    'ip_address' => $row->ip_address,
                    'user_agent' => $row->user_agent,
                    'last_activity' => (int) $row->last_activity,
                    'payload' => $row->payload,
                    // The string the Store wrote (the column holds it base64-encoded).
                    'data' => base64_decode($row->payload),
                ];
            } else {
                [$connection, $key] = redis_key($app, $id);
                $raw = $connection->get($key);
                $stored = $raw === null ? null : [
                    'value' => $raw,
                    'ttl' => $connection->ttl($key),
                    // The string the Store wrote (RedisStore serialized it again).
                    'data' => unserialize($raw),
                ];
            }
            if ($stored !== null && $config['session']['encrypt']) {
                // EncryptedStore: the string is an Encrypter payload of the serialized session,
                // encrypted with serialization (s:N:"…";).
                $stored['plaintext'] = $app['encrypter']->decrypt($stored['data'], false);
            }
            // Store::readFromHandler: what a request with this session's cookie would start
            // from ([] when the handler finds nothing, or an expired row).
            $store = $app['session']->driver();
            $store->setId($id);
            $attributes = (fn () => $this->readFromHandler())->call($store);
            out(['id' => $id, 'exists' => $stored !== null, 'stored' => $stored, 'attributes' => $attributes]
                + ['storage' => storage_name($app, $id)]);
            break;

        case 'encrypt-cookie':
            if (count($args) !== 2) {
                usage('encrypt-cookie NAME VALUE');
            }
            [$name, $value] = $args;
            $app = application($config);
            $response = $app->make(EncryptCookies::class)->handle(
                Request::create('http://localhost/'),
                fn () => (new Response())->withCookie(new Cookie($name, $value, 0, '/', null, null, true, false, 'lax'))
            );
            $cookie = $response->headers->getCookies()[0];
            $header = (string) $cookie;
            out([
                'name' => $name,
                'cookie' => explode(';', explode('=', $header, 2)[1], 2)[0],
                'set_cookie' => $header,
            ]);
            break;

        case 'decrypt-cookie':
            if (count($args) !== 2) {
                usage('decrypt-cookie NAME VALUE');
            }
            // VALUE as in a Cookie header; PHP urldecode()s it into $_COOKIE.
            [$name, $value] = $args;
            $app = application($config);
            $raw = urldecode($value);
            $seen = null;
            $app->make(EncryptCookies::class)->handle(
                Request::create('http://localhost/', 'GET', [], [$name => $raw]),
                function ($request) use ($name, &$seen) {
                    $seen = $request->cookies->get($name);
                    return new Response();
                }
            );
            try {
                $decrypted = $app['encrypter']->decrypt($raw, EncryptCookies::serialized($name));
                $error = null;
            } catch (DecryptException $e) {
                [$decrypted, $error] = [null, $e->getMessage()];
            }
            out([
                'name' => $name,
                // What the app sees after EncryptCookies: the value, or null (a wrong MAC or
                // key, or the prefix of another cookie name).
                'value' => $seen,
                // The plaintext: CookieValuePrefix (sha1 HMAC of NAME.'v2', '|') and the value.
                'decrypted' => $decrypted,
                'error' => $error,
            ]);
            break;

        case 'key':
            if ($args) {
                usage('key');
            }
            // `php artisan key:generate` (KeyGenerateCommand::generateRandomKey).
            out(['key' => 'base64:' . base64_encode(Encrypter::generateKey($cipher)), 'cipher' => $cipher]);
            break;

        default:
            usage("unknown command $command");
    }
} catch (Throwable $e) {
    fwrite(STDERR, 'session.php ' . $command . ': ' . get_class($e) . ': ' . $e->getMessage() . "\n");
    exit(1);
}
