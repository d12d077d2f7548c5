<?php
// What the PHP test scripts (sanctum.php, session.php) share: their usage errors and their
// argument parsing.

/** A usage error: the message on stderr, exit 2. */
function usage(string $why): never
{
    fwrite(STDERR, basename($_SERVER['argv'][0] ?? 'script') . ": $why\n");
    exit(2);
}

/** Splits argv into positional arguments and --options (`--flag` is true, `--key value`). */
function parse_args(array $argv, array $flags): array
{
    $positional = [];
    $options = [];
    for ($i = 0; $i < count($argv); $i++) {
        $arg = $argv[$i];
        if (!str_starts_with($arg, '--')) {
            $positional[] = $arg;
        } elseif (in_array(substr($arg, 2), $flags, true)) {
            $options[substr($arg, 2)] = true;
        } elseif ($i + 1 < count($argv)) {
            $options[substr($arg, 2)] = $argv[++$i];
        } else {
            usage("$arg needs a value");
        }
    }
    return [$positional, $options];
}
