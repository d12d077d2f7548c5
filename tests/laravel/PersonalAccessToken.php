<?php
// Sanctum 4's PersonalAccessToken model (src/PersonalAccessToken.php), as far as the tests
// use it: the same casts, fillable and hidden attributes and the same findToken, on
// Laravel 8.83's Eloquent. Only the table name may differ (tokengate's `tokens_table`).

namespace Tokengate\Tests;

use Illuminate\Database\Eloquent\Model;

class PersonalAccessToken extends Model
{
    /** The table (Sanctum's is always personal_access_tokens). */
    public static string $tableName = 'personal_access_tokens';

    protected $casts = [
        'abilities' => 'json',
        'last_used_at' => 'datetime',
        'expires_at' => 'datetime',
    ];

    protected $fillable = [
        'name',
        'token',
        'abilities',
        'expires_at',
    ];

    protected $hidden = [
        'token',
    ];

    public function getTable()
    {
        return static::$tableName;
    }

    /**
     * Sanctum's findToken: a token without `|` is looked up by its SHA-256; `id|secret` by
     * its id, and only if the stored hash equals the secret's (hash_equals, constant time).
     */
    public static function findToken($token)
    {
        if (!str_contains($token, '|')) {
            return static::query()->where('token', hash('sha256', $token))->first();
        }
        [$id, $secret] = explode('|', $token, 2);
        $row = static::find($id);
        if ($row && hash_equals($row->token, hash('sha256', $secret))) {
            return $row;
        }
        return null;
    }

    /** Sanctum's can: `*` or the ability itself. */
    public function can($ability)
    {
        return in_array('*', $this->abilities) ||
               array_key_exists($ability, array_flip($this->abilities));
    }
}
