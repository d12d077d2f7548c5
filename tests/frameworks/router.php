<?php
// PHP upstream for tests/frameworks.rs, run by PHP's built-in server
// (`php -S 127.0.0.1:PORT router.php`). Answers every request with JSON of what PHP saw and
// the method Laravel would run (Laravel 8.83 from Debian's php-laravel-framework), and
// counts the requests it ran in the file $TG_COUNT_FILE (GET /__seen, asked directly).
require '/usr/share/php/Illuminate/autoload.php';

header('Content-Type: application/json');
$count_file = getenv('TG_COUNT_FILE');
if ($_SERVER['REQUEST_URI'] === '/__seen') {
    echo json_encode(['count' => strlen((string) @file_get_contents($count_file))]);
    return;
}
file_put_contents($count_file, '.', FILE_APPEND | LOCK_EX);

$http = [];
foreach ($_SERVER as $key => $value) {
    if (str_starts_with($key, 'HTTP_')) {
        $http[$key] = $value;
    }
}
// capture() turns on the `_method` override and, for a JSON body, makes it the input.
$laravel = \Illuminate\Http\Request::capture();
echo json_encode([
    'framework' => 'php',
    'method' => $_SERVER['REQUEST_METHOD'],
    'uri' => $_SERVER['REQUEST_URI'],
    'server' => (object) $http,
    'get' => (object) $_GET,
    'post' => (object) $_POST,
    'cookies' => (object) $_COOKIE,
    'laravel_method' => $laravel->getMethod(),
    'laravel_abilities' => $laravel->header('X-Token-Abilities'),
    // Every header as Laravel (Symfony's HeaderBag) reads it: lower case, `_` folded to `-`.
    'laravel_headers' => (object) $laravel->headers->all(),
]);
