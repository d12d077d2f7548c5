<?php
// Laravel Sanctum 4's side of Sanctum's `personal_access_tokens` table, for the database
// tests (tests/databases.rs): its migration run by Laravel's own schema builder, tokens
// minted as `HasApiTokens::createToken` mints them, `PersonalAccessToken::findToken`, and the
// deletes and updates an app makes. Laravel 8.83 from Debian's php-laravel-framework, loaded
// without Composer; the database is the one in $DB_URL (postgres://… or mysql://…, as a
// Laravel app's DATABASE_URL), the table $SANCTUM_TABLE (default personal_access_tokens).
//
//   php sanctum.php migrate [--schema current|4.0]
//   php sanctum.php create-token USER_ID NAME ABILITIES_JSON [--prefix P] [--legacy] [--expires-at DATETIME]
//   php sanctum.php find-token PLAINTEXT
//   php sanctum.php delete-token ID
//   php sanctum.php set-abilities ID ABILITIES_JSON
//
// Each prints one line of JSON on success; on failure a message on stderr and exit 1 (2 for
// bad usage).
require __DIR__ . '/cli.php';
require '/usr/share/php/Illuminate/Support/autoload.php';
require '/usr/share/php/Illuminate/Database/autoload.php';
require '/usr/share/php/Illuminate/Events/autoload.php';
require __DIR__ . '/PersonalAccessToken.php';

use Illuminate\Database\Capsule\Manager as Capsule;
use Illuminate\Database\Schema\Blueprint;
use Illuminate\Support\Str;
use Tokengate\Tests\PersonalAccessToken;

function abilities_arg(string $json): array
{
    $abilities = json_decode($json, true);
    if (!is_array($abilities) || !array_is_list($abilities)) {
        usage("abilities must be a JSON array, got $json");
    }
    return $abilities;
}

/** A row as JSON-friendly values: ids as integers, abilities decoded (Sanctum's cast). */
function row(PersonalAccessToken $token): array
{
    return array_merge($token->getAttributes(), [
        'id' => (int) $token->id,
        'tokenable_id' => (int) $token->tokenable_id,
        'abilities' => $token->abilities,
        'abilities_text' => $token->getAttributes()['abilities'],
    ]);
}

function out($value): void
{
    echo json_encode($value, JSON_UNESCAPED_SLASHES), "\n";
}

$url = getenv('DB_URL') ?: usage('DB_URL is not set (postgres://… or mysql://…)');
$table = getenv('SANCTUM_TABLE') ?: 'personal_access_tokens';

$capsule = new Capsule();
// Laravel's URL parser picks the driver from the scheme (postgres → pgsql), as it does for
// an app's DATABASE_URL; the rest is the default config of a new Laravel app.
$capsule->addConnection(str_starts_with($url, 'mysql')
    ? ['url' => $url, 'charset' => 'utf8mb4', 'collation' => 'utf8mb4_unicode_ci', 'prefix' => '']
    : ['url' => $url, 'charset' => 'utf8', 'prefix' => '', 'schema' => 'public']);
$capsule->setAsGlobal();
$capsule->bootEloquent();
PersonalAccessToken::$tableName = $table;

[$args, $options] = parse_args(array_slice($argv, 1), ['legacy']);
$command = array_shift($args) ?? usage('no command');

try {
    switch ($command) {
        case 'migrate':
            // Sanctum 4's migration (database/migrations/2019_12_14_000001_create_personal_access_tokens_table.php).
            // `current`: as of laravel/sanctum#570 (name is text) and #571 (expires_at indexed),
            // July 2025. `4.0`: as released in 4.0.0 (name varchar(255), no index on expires_at),
            // the table apps installed before then still have.
            $schema = $options['schema'] ?? 'current';
            if (!in_array($schema, ['current', '4.0'], true)) {
                usage("unknown --schema $schema (current or 4.0)");
            }
            Capsule::schema()->create($table, function (Blueprint $table) use ($schema) {
                $table->id();
                $table->morphs('tokenable');
                if ($schema === 'current') {
                    $table->text('name');
                } else {
                    $table->string('name');
                }
                $table->string('token', 64)->unique();
                $table->text('abilities')->nullable();
                $table->timestamp('last_used_at')->nullable();
                if ($schema === 'current') {
                    $table->timestamp('expires_at')->nullable()->index();
                } else {
                    $table->timestamp('expires_at')->nullable();
                }
                $table->timestamps();
            });
            out(['migrated' => $table, 'schema' => $schema]);
            break;

        case 'create-token':
            if (count($args) !== 3) {
                usage('create-token USER_ID NAME ABILITIES_JSON [--prefix P] [--legacy] [--expires-at DATETIME]');
            }
            [$user, $name, $abilities] = $args;
            if (!empty($options['legacy'])) {
                // Sanctum 2.x (and 3.0–3.1): 40 random characters, no prefix, no checksum.
                if (isset($options['prefix'])) {
                    usage('--legacy tokens have no prefix');
                }
                $plainTextToken = Str::random(40);
            } else {
                // HasApiTokens::generateTokenString (Sanctum 4): the configured
                // sanctum.token_prefix, 40 random characters, their crc32b.
                $plainTextToken = sprintf(
                    '%s%s%s',
                    $options['prefix'] ?? '',
                    $tokenEntropy = Str::random(40),
                    hash('crc32b', $tokenEntropy)
                );
            }
            // createToken: `$this->tokens()->create([...])` on the user's morphMany relation,
            // which sets tokenable_type/tokenable_id; Eloquent casts abilities to JSON and
            // fills created_at/updated_at.
            $token = PersonalAccessToken::forceCreate([
                'tokenable_type' => 'App\Models\User',
                'tokenable_id' => (int) $user,
                'name' => $name,
                'token' => hash('sha256', $plainTextToken),
                'abilities' => abilities_arg($abilities),
                'expires_at' => $options['expires-at'] ?? null,
            ]);
            out(['id' => (int) $token->getKey(), 'plaintext' => $token->getKey() . '|' . $plainTextToken]);
            break;

        case 'find-token':
            if (count($args) !== 1) {
                usage('find-token PLAINTEXT');
            }
            $token = PersonalAccessToken::findToken($args[0]);
            out($token ? row($token) : null);
            break;

        case 'delete-token':
            if (count($args) !== 1) {
                usage('delete-token ID');
            }
            // Sanctum's revocation: `$user->tokens()->where('id', $id)->delete()`.
            out(['deleted' => PersonalAccessToken::query()->where('id', (int) $args[0])->delete()]);
            break;

        case 'set-abilities':
            if (count($args) !== 2) {
                usage('set-abilities ID ABILITIES_JSON');
            }
            $token = PersonalAccessToken::find((int) $args[0]);
            if (!$token) {
                fwrite(STDERR, "sanctum.php: no token {$args[0]}\n");
                exit(1);
            }
            $token->forceFill(['abilities' => abilities_arg($args[1])])->save();
            out(row($token->refresh()));
            break;

        default:
            usage("unknown command $command");
    }
} catch (Throwable $e) {
    fwrite(STDERR, 'sanctum.php ' . $command . ': ' . get_class($e) . ': ' . $e->getMessage() . "\n");
    exit(1);
}
