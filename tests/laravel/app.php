<?php
// A Laravel 8.83 application as a new app's config files and service providers make it
// (Debian's php-laravel-framework, loaded without Composer), for the test scripts that run
// Laravel's own session, cookie, encryption and auth classes: session.php (the sessions a
// browser gets, command by command) and spa/index.php (a small app served by `php -S`).
// Nothing here runs a request: it defines the settings, the database connection and
// application(), which builds the container one request runs in.
//
// The settings come from the environment, with the names of Laravel's .env: session.php's
// header lists them (APP_KEY, SESSION_CIPHER, SESSION_DRIVER, DB_URL, …). An invalid one is
// reported through usage(string $why): never, which the including script defines (cli.php's
// for the command-line scripts).
require '/usr/share/php/Illuminate/Support/autoload.php';
require '/usr/share/php/Illuminate/Container/autoload.php';
require '/usr/share/php/Illuminate/Config/autoload.php';
require '/usr/share/php/Illuminate/Encryption/autoload.php';
require '/usr/share/php/Illuminate/Cookie/autoload.php';
require '/usr/share/php/Illuminate/Session/autoload.php';
require '/usr/share/php/Illuminate/Auth/autoload.php';
require '/usr/share/php/Illuminate/Http/autoload.php';
require '/usr/share/php/Illuminate/Routing/autoload.php';
require '/usr/share/php/Illuminate/Pipeline/autoload.php';
require '/usr/share/php/Illuminate/Database/autoload.php';
require '/usr/share/php/Illuminate/Events/autoload.php';
require '/usr/share/php/Illuminate/Cache/autoload.php';
require '/usr/share/php/Illuminate/Redis/autoload.php';
// Illuminate\Foundation (Application, VerifyCsrfToken, the config() helper) has no autoload of
// its own in Debian: it is in the framework's.
require '/usr/share/php/Illuminate/autoload.php';

use Illuminate\Auth\AuthServiceProvider;
use Illuminate\Auth\GenericUser;
use Illuminate\Cache\CacheServiceProvider;
use Illuminate\Config\Repository as Config;
use Illuminate\Contracts\Auth\Authenticatable;
use Illuminate\Contracts\Auth\UserProvider;
use Illuminate\Contracts\Encryption\DecryptException;
use Illuminate\Cookie\CookieServiceProvider;
use Illuminate\Cookie\CookieValuePrefix;
use Illuminate\Cookie\Middleware\EncryptCookies;
use Illuminate\Database\Capsule\Manager as Capsule;
use Illuminate\Encryption\Encrypter;
use Illuminate\Encryption\EncryptionServiceProvider;
use Illuminate\Foundation\Application;
use Illuminate\Redis\RedisServiceProvider;
use Illuminate\Session\EncryptedStore;
use Illuminate\Session\SessionManager;
use Illuminate\Session\SessionServiceProvider;
use Illuminate\Session\Store;

function env_or(string $name, string $default): string
{
    $value = getenv($name);
    return $value === false || $value === '' ? $default : $value;
}

/** The `base64:` key string of .env as EncryptionServiceProvider::parseKey reads it. */
function parse_key(string $key): string
{
    return str_starts_with($key, 'base64:') ? base64_decode(substr($key, 7)) : $key;
}

// ---------------------------------------------------------------------------------------
// Emulations of newer Laravel, used only when the setting asks for them (with the defaults,
// every class that touches a byte is Laravel 8.83's own).

/**
 * Laravel 11+'s Encrypter with previous keys (laravel/framework#49962, config
 * app.previous_keys from APP_PREVIOUS_KEYS): encryption uses the current key; decryption
 * takes the first key whose MAC matches (CBC) or that decrypts (GCM). Laravel 8.83 has no
 * previous keys. The code is 11.x's decrypt().
 */
final class PreviousKeysEncrypter extends Encrypter
{
    private array $previousKeys = [];

    public function previousKeys(array $keys): self
    {
        foreach ($keys as $key) {
            if (!static::supported($key, $this->cipher)) {
                throw new RuntimeException('APP_PREVIOUS_KEYS: a key of the wrong length for ' . $this->cipher);
            }
        }
        $this->previousKeys = $keys;
        return $this;
    }

    public function getAllKeys(): array
    {
        return [$this->key, ...$this->previousKeys];
    }

    private function aead(): bool
    {
        return in_array(strtolower($this->cipher), ['aes-128-gcm', 'aes-256-gcm'], true);
    }

    public function decrypt($payload, $unserialize = true)
    {
        $payload = json_decode(base64_decode($payload), true);
        if (!$this->validPayload($payload)) {
            throw new DecryptException('The payload is invalid.');
        }
        $iv = base64_decode($payload['iv']);
        $this->ensureTagIsValid($tag = empty($payload['tag']) ? null : base64_decode($payload['tag']));
        $validKey = null;
        foreach ($this->getAllKeys() as $key) {
            if (!$this->aead()) {
                $valid = hash_equals(hash_hmac('sha256', $payload['iv'] . $payload['value'], $key), $payload['mac']);
                if ($valid && $validKey === null) {
                    $validKey = $key;
                }
                continue;
            }
            $decrypted = \openssl_decrypt($payload['value'], strtolower($this->cipher), $key, 0, $iv, $tag ?? '');
            if ($decrypted !== false) {
                break;
            }
        }
        if (!$this->aead() && $validKey === null) {
            throw new DecryptException('The MAC is invalid.');
        }
        if (!$this->aead()) {
            $decrypted = \openssl_decrypt($payload['value'], strtolower($this->cipher), $validKey, 0, $iv, $tag ?? '');
        }
        if (($decrypted ?? false) === false) {
            throw new DecryptException('Could not decrypt the data.');
        }
        return $unserialize ? unserialize($decrypted) : $decrypted;
    }
}

/**
 * Laravel 11+'s EncryptCookies::decrypt: the value's prefix may be that of any of the keys
 * (CookieValuePrefix::validate). Used with PreviousKeysEncrypter only.
 */
final class PreviousKeysEncryptCookies extends EncryptCookies
{
    protected function decrypt(\Symfony\Component\HttpFoundation\Request $request)
    {
        foreach ($request->cookies as $key => $cookie) {
            if ($this->isDisabled($key) || is_array($cookie)) {
                continue;
            }
            try {
                $value = $this->decryptCookie($key, $cookie);
                $valid = null;
                foreach ($this->encrypter->getAllKeys() as $k) {
                    if (str_starts_with($value, CookieValuePrefix::create($key, $k))) {
                        $valid = CookieValuePrefix::remove($value);
                        break;
                    }
                }
                $request->cookies->set($key, $valid);
            } catch (DecryptException $e) {
                $request->cookies->set($key, null);
            }
        }
        return $request;
    }
}

/**
 * Laravel 9+'s `session.serialization = json` (laravel/framework#40595): Store::save writes
 * json_encode($attributes) (no flags: `/` escaped as `\/`, non-ASCII as \uXXXX) where 8.83
 * writes serialize($attributes), and readFromHandler json_decodes. Laravel 8.83 has no such
 * option. (9+ also turns a ViewErrorBag under `errors` into arrays first; these sessions
 * never hold one.) Everything around it is unchanged: the database driver still stores the
 * string base64-encoded, the redis store still PHP-serializes it (`s:N:"{…}";`), and an
 * EncryptedStore still encrypts it with serialization (`s:N:"{…}";` inside the ciphertext).
 */
trait JsonSerialization
{
    protected function readFromHandler()
    {
        if ($data = $this->handler->read($this->getId())) {
            $data = json_decode($this->prepareForUnserialize($data), true);
            if ($data !== false && !is_null($data) && is_array($data)) {
                return $data;
            }
        }
        return [];
    }

    public function save()
    {
        $this->ageFlashData();
        $this->handler->write($this->getId(), $this->prepareForStorage(json_encode($this->attributes)));
        $this->started = false;
    }
}

final class JsonStore extends Store
{
    use JsonSerialization;
}

final class JsonEncryptedStore extends EncryptedStore
{
    use JsonSerialization;

    protected function prepareForUnserialize($data)
    {
        try {
            return $this->encrypter->decrypt($data);
        } catch (DecryptException $e) {
            return json_encode([]);
        }
    }
}

/** SessionManager::buildSession as in Laravel 9+, passing session.serialization on. */
final class JsonSessionManager extends SessionManager
{
    protected function buildSession($handler)
    {
        return $this->config->get('session.encrypt')
            ? new JsonEncryptedStore($this->config->get('session.cookie'), $handler, $this->container['encrypter'])
            : new JsonStore($this->config->get('session.cookie'), $handler);
    }
}

/**
 * The app's users, as the guard's user provider: any id is a user (the tests have no users
 * table; an app's EloquentUserProvider would read it). remember_token is there because
 * SessionGuard::logout reads it.
 */
final class TestUsers implements UserProvider
{
    public function retrieveById($identifier)
    {
        return new GenericUser(['id' => $identifier, 'remember_token' => null]);
    }

    public function retrieveByToken($identifier, $token)
    {
        return null;
    }

    public function updateRememberToken(Authenticatable $user, $token)
    {
    }

    public function retrieveByCredentials(array $credentials)
    {
        return null;
    }

    public function validateCredentials(Authenticatable $user, array $credentials)
    {
        return false;
    }
}

// ---------------------------------------------------------------------------------------
// Configuration.

/**
 * The config of a new Laravel 8 app (the parts these classes read), with the settings
 * from the environment; an invalid setting is a usage() error.
 */
function laravel_config(): array
{
    $cipher = env_or('SESSION_CIPHER', 'AES-256-CBC');
    if (!in_array(strtolower($cipher), ['aes-128-cbc', 'aes-256-cbc', 'aes-128-gcm', 'aes-256-gcm'], true)) {
        usage("SESSION_CIPHER $cipher: AES-256-CBC, AES-128-CBC, AES-256-GCM or AES-128-GCM");
    }
    $driver = env_or('SESSION_DRIVER', 'database');
    if (!in_array($driver, ['database', 'redis'], true)) {
        usage("SESSION_DRIVER $driver: database or redis");
    }
    $serialization = env_or('SESSION_SERIALIZATION', 'php');
    if (!in_array($serialization, ['php', 'json'], true)) {
        usage("SESSION_SERIALIZATION $serialization: php or json");
    }
    $encrypt = env_or('SESSION_ENCRYPT', '0');
    if (!in_array($encrypt, ['0', '1'], true)) {
        usage("SESSION_ENCRYPT $encrypt: 0 or 1");
    }
    $lifetime = env_or('SESSION_LIFETIME', '120');
    if (!ctype_digit($lifetime) || (int) $lifetime < 1) {
        usage("SESSION_LIFETIME $lifetime: minutes, a positive integer");
    }
    $lifetime = (int) $lifetime;
    $previousKeys = array_values(array_filter(explode(',', env_or('APP_PREVIOUS_KEYS', ''))));

    $config = [
        'app' => [
            'key' => getenv('APP_KEY') ?: null,
            'cipher' => $cipher,
            'previous_keys' => $previousKeys,
        ],
        'session' => [
            'driver' => $driver,
            'lifetime' => $lifetime,
            'expire_on_close' => false,
            'encrypt' => $encrypt === '1',
            'files' => null,
            'connection' => null,
            'table' => env_or('SESSION_TABLE', 'sessions'),
            'store' => null,
            'lottery' => [0, 100],
            'cookie' => env_or('SESSION_COOKIE', 'laravel_session'),
            'path' => '/',
            'domain' => null,
            'secure' => null,
            'http_only' => true,
            'same_site' => 'lax',
            'serialization' => $serialization,
        ],
        'auth' => [
            'defaults' => ['guard' => 'web', 'passwords' => 'users'],
            'guards' => [
                'web' => ['driver' => 'session', 'provider' => 'users'],
            ],
            'providers' => ['users' => ['driver' => 'tests']],
        ],
        'cache' => [
            'default' => 'redis',
            'stores' => [
                'redis' => ['driver' => 'redis', 'connection' => 'cache', 'lock_connection' => 'default'],
            ],
            'prefix' => env_or('CACHE_PREFIX', 'laravel_cache'),
        ],
        'database' => [
            'redis' => [
                'client' => 'phpredis',
                'options' => [
                    'cluster' => 'redis',
                    'prefix' => getenv('REDIS_PREFIX') !== false ? getenv('REDIS_PREFIX') : 'laravel_database_',
                ],
                'default' => ['url' => getenv('REDIS_URL') ?: null, 'database' => '0'],
                'cache' => ['url' => getenv('REDIS_URL') ?: null, 'database' => '1'],
            ],
        ],
    ];
    if (getenv('CACHE_PREFIX') === '') {
        $config['cache']['prefix'] = '';
    }
    return $config;
}

/** The database connection (Capsule, as sanctum.php), made when first needed. */
function database(): Capsule
{
    static $capsule = null;
    if ($capsule === null) {
        $url = getenv('DB_URL') ?: usage('DB_URL is not set (postgres://… or mysql://…)');
        $capsule = new Capsule();
        // Laravel's URL parser picks the driver from the scheme (postgres → pgsql), as it does
        // for an app's DATABASE_URL; the rest is the default config of a new Laravel app.
        $capsule->addConnection(str_starts_with($url, 'mysql')
            ? ['url' => $url, 'charset' => 'utf8mb4', 'collation' => 'utf8mb4_unicode_ci', 'prefix' => '']
            : ['url' => $url, 'charset' => 'utf8', 'prefix' => '', 'schema' => 'public']);
    }
    return $capsule;
}

/**
 * A Laravel application for one request: the container with `$config` (laravel_config())
 * and the service providers' bindings. `$defaultGuard` is auth.defaults.guard.
 */
function application(array $config, string $defaultGuard = 'web'): Application
{
    $config['auth']['defaults']['guard'] = $defaultGuard;
    foreach (['web', $defaultGuard] as $guard) {
        $config['auth']['guards'][$guard] = ['driver' => 'session', 'provider' => 'users'];
    }
    // Application's constructor registers the core aliases (Guard → auth.driver,
    // Encrypter → encrypter, SessionManager → session, …) and makes itself the container
    // instance that config() and app() use.
    $app = new Application(sys_get_temp_dir());
    $app->instance('env', 'production');
    $app->instance('config', new Config($config));
    foreach ([
        EncryptionServiceProvider::class,
        CookieServiceProvider::class,
        SessionServiceProvider::class,
        AuthServiceProvider::class,
        CacheServiceProvider::class,
        RedisServiceProvider::class,
    ] as $provider) {
        $app->register($provider);
    }
    // Laravel's database manager, connected when the session driver first needs it.
    $app->singleton('db', fn () => database()->getDatabaseManager());
    if ($config['app']['previous_keys']) {
        $app->singleton('encrypter', function ($app) {
            $config = $app->make('config')->get('app');
            if (empty($config['key'])) {
                throw new RuntimeException('APP_KEY is not set');
            }
            return (new PreviousKeysEncrypter(parse_key($config['key']), $config['cipher']))
                ->previousKeys(array_map('parse_key', $config['previous_keys']));
        });
        $app->singleton(EncryptCookies::class, fn ($app) => new PreviousKeysEncryptCookies($app['encrypter']));
    }
    if ($config['session']['serialization'] === 'json') {
        $app->singleton('session', fn ($app) => new JsonSessionManager($app));
    }
    $app['auth']->provider('tests', fn () => new TestUsers());
    return $app;
}
