# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_dedisk_global_optspecs
    string join \n repo= cache-dir= json v/verbose q/quiet lock-wait= key-file= h/help V/version
end

function __fish_dedisk_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_dedisk_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_dedisk_using_subcommand
    set -l cmd (__fish_dedisk_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c dedisk -n "__fish_dedisk_needs_command" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_needs_command" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_needs_command" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_needs_command" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_needs_command" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_needs_command" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_needs_command" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_needs_command" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_needs_command" -s V -l version -d 'Print version'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "init" -d 'Create a new repository (encrypted unless --encryption none)'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "key" -d 'Manage an encrypted repository\'s keys: list, add, remove, passwd, export, import'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "backup" -d 'Back up one VM\'s disks into a new snapshot'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "snapshots" -d 'List snapshots'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "restore" -d 'Restore a snapshot\'s disk to a file or block device'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "stats" -d 'Show repository size, deduplication and compression'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "verify" -d 'Check the repository: structure, and with --read-data every chunk\'s bytes'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "forget" -d 'Forget snapshots a retention policy does not keep (per VM)'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "run" -d 'Run a nightly job file: snapshot, back up, release, retention, report'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "mount" -d 'Mount every snapshot read-only (FUSE): VM/TIME_ID/LABEL.raw, LABEL.pN partitions'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "serve-nbd" -d 'Serve snapshot disks read-only over NBD (for qemu-img, qemu, nbd-client)'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "inspect" -d 'Show what dedisk sees in a disk image: format, size, backing chain, allocation'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "prune" -d 'Delete unreferenced data: packs nothing uses, and repack mostly-unused ones'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "copy" -d 'Copy snapshots into another repository, sending only the chunks it lacks'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "unlock" -d 'Remove the locks of processes that are provably gone (others are listed)'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "repair" -d 'Rebuild derived data from what the repository holds'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "metrics" -d 'Print the repository\'s Prometheus metrics (size, snapshots, each VM\'s newest)'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "ui" -d 'A read-only web dashboard of the repository: VMs and their last backups, nights, growth, the last verify, prune and boot tests, each snapshot\'s disks'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "completions" -d 'Print a shell completion script (bash, zsh or fish) to stdout'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "manpages" -d 'Write the man pages (dedisk.1 and one per command, dedisk-backup.1, ...) into DIR'
complete -c dedisk -n "__fish_dedisk_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l encryption -d 'Encryption of the new repository' -r -f -a "aes-256-gcm\t'Keyed BLAKE3 ids, AES-256-GCM sealing, Padmé padding (format version 2)'
none\t'No encryption: a plaintext repository (format version 1), on purpose'"
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l key-label -d 'The first key\'s label (default: this host\'s name)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l kdf-memory -d 'Memory argon2id uses, in MiB (8..=4096)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l kdf-passes -d 'argon2id passes (1..=64)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l kdf-lanes -d 'argon2id lanes (1..=64)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l chunker -d 'Chunking algorithm (fixed for the repository\'s lifetime)' -r -f -a "aligned-cdc\t''
fastcdc\t''
fixed\t''"
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l chunk-min -d 'Smallest chunk, in KiB' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l chunk-avg -d 'Target average chunk, in KiB' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l chunk-max -d 'Largest chunk, in KiB' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l file-start-tail -d 'aligned-cdc: also cut where a block follows at least this many zero bytes (the slack after a file\'s end), so the same files deduplicate in any layout; 0 turns it off [default: 256]' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l compression-level -d 'zstd compression level for new chunks (1-19)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l pack-size -d 'Target pack file size, in MiB' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand init" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -f -a "list" -d 'List the key files in REPO/keys/'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -f -a "add" -d 'Add a key file with a new password (DEDISK_NEW_PASSWORD(_FILE), or a prompt)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -f -a "remove" -d 'Remove a key file (never the last one)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -f -a "passwd" -d 'Change the password of the key that opens the repository'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -f -a "export" -d 'Write the master key out for safekeeping: to FILE, or as a paper form on stdout'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -f -a "import" -d 'Add a key file from an exported master key (a file from `key export`, or the paper form typed back in on stdin), when every password is lost'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and not __fish_seen_subcommand_from list add remove passwd export import help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from list" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from list" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from list" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from list" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from list" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from list" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from list" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from list" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l label -d 'Who or what the key is for (an admin, a host)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l kdf-memory -d 'Memory argon2id uses, in MiB (8..=4096)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l kdf-passes -d 'argon2id passes (1..=64)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l kdf-lanes -d 'argon2id lanes (1..=64)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from add" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from remove" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from remove" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from remove" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from remove" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from remove" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from remove" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from remove" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from remove" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -l kdf-memory -d 'Memory argon2id uses, in MiB (8..=4096)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -l kdf-passes -d 'argon2id passes (1..=64)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -l kdf-lanes -d 'argon2id lanes (1..=64)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from passwd" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -l paper -d 'Print the key as a paper form (two lines of hex with check groups)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from export" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l label -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l kdf-memory -d 'Memory argon2id uses, in MiB (8..=4096)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l kdf-passes -d 'argon2id passes (1..=64)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l kdf-lanes -d 'argon2id lanes (1..=64)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "list" -d 'List the key files in REPO/keys/'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "add" -d 'Add a key file with a new password (DEDISK_NEW_PASSWORD(_FILE), or a prompt)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "remove" -d 'Remove a key file (never the last one)'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "passwd" -d 'Change the password of the key that opens the repository'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "export" -d 'Write the master key out for safekeeping: to FILE, or as a paper form on stdout'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "import" -d 'Add a key file from an exported master key (a file from `key export`, or the paper form typed back in on stdin), when every password is lost'
complete -c dedisk -n "__fish_dedisk_using_subcommand key; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l name -d 'VM name the snapshot belongs to' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l tag -d 'Tag for the snapshot (repeatable)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l meta -d 'Small file to keep with the snapshot (domain XML, .cfg, NVRAM); repeatable' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l time -d 'Record this time (RFC 3339, e.g. 2026-11-30T01:00:00Z) instead of now: for images taken earlier, such as an old LVM-script archive being imported' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l workers -d 'Hash/compress threads (default: one per core)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l format -d 'Image format of the disks: `auto` judges each file by its content (qcow2, VHD, VHDX, VMDK, VDI, XVA, else raw); `raw` stores any file byte for byte' -r -f -a "auto\t''
raw\t''
qcow2\t''
vhd\t''
vhdx\t''
vmdk\t''
vdi\t''
xva\t''"
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l qcow2-snapshot -d 'qcow2: back up this internal snapshot (name or id) instead of the active layer' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l base -d 'Read only what changed since this snapshot (`latest`, `VM@latest`, an id prefix), which must be the VM\'s latest; the changes come from --dirty-bitmap or --changed-ranges. Anything untrustworthy reads the disk in full, and says why' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l dirty-bitmap -d 'NBD disks: the dirty bitmap holding the writes since --base (`qemu:dirty-bitmap:NAME` on the export)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l changed-ranges -d 'The changes since --base as a file of `OFFSET LENGTH` lines (README, "Changed ranges"); `LABEL=FILE` for one disk of several. Repeatable' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l verify-unchanged -d 'Percent of the unchanged data read again each night and checked against the base, so every byte is re-read every 100/PCT nights; 0 trusts the map blindly' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l allow-empty -d 'Keep a disk read from stdin or a pipe that gave no data (refused by default: an empty stream is usually a dead export)'
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l no-direct -d 'Read through the page cache instead of O_DIRECT'
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand backup" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -l name -d 'Only this VM\'s snapshots' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -l full -d 'With --json: each snapshot\'s whole record as stored (an encrypted repository\'s snapshot files cannot be read without the key)'
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand snapshots" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l mode -d 'Permission bits of restored files, in octal (restored disks hold a guest\'s data)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l format -d 'Write disks as raw (a sparse file or a device) or as a sparse qcow2 file' -r -f -a "raw\t''
qcow2\t''"
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l workers -d 'Restore threads (default: one per core)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l since -d 'With --differential: TARGET holds exactly this snapshot\'s disk (your word; an id prefix, `latest` or `VM@latest`), so the manifests are compared and nothing is read' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l force -d 'Overwrite an existing target file (and write through a symlink named as TARGET)'
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l differential -d 'Write over the existing TARGET (a file of the disk\'s size or a block device) in place, only where it differs: it is read and hashed at the snapshot\'s chunk boundaries. Refused while it is mounted or in use. (--force then only means: write through a symlink named as TARGET that another user could have made.)'
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l check -d 'With --differential: read TARGET back afterwards and compare it with the snapshot'
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand restore" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand stats" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand stats" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand stats" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand stats" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand stats" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand stats" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand stats" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand stats" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l subset -d 'With --read-data: only a deterministic share of the packs, `N%` or slice `K/N`' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l name -d 'Only this VM\'s snapshots' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l snapshot -d 'Only this snapshot (id prefix, `latest` or `VM@latest`)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l workers -d 'Threads checking the data of packs read ahead (default: one per core, plus one)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l fsck -d 'Instead: check the guest filesystems of SNAPSHOT read-only through the mount (e2fsck -fn, xfs_repair -n, btrfs check --readonly, fsck.vfat -n)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l boot -d 'Instead: boot SNAPSHOT in a throwaway QEMU guest on copy-on-write overlays of its NBD export (nothing is written anywhere) and wait for a sign that it booted' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l boot-serial -d 'With --boot: the sign is a serial-console line matching this regular expression' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l boot-screen -d 'With --boot (the default sign): the console screen unchanged for this many seconds' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l boot-timeout -d 'With --boot: give up after this many seconds' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l accel -d 'With --boot: kvm, tcg, or auto (KVM where it works, else TCG, saying so)' -r -f -a "auto\t''
kvm\t''
tcg\t''"
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l boot-memory -d 'With --boot: the most memory the guest gets, in MiB (its domain XML\'s, capped)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l evidence -d 'With --boot: a new folder for the evidence (screenshot, serial and firmware logs, report.json); default ./dedisk-boot-ID-TIME' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l fsck-timeout -d 'With --fsck: seconds each checker may take' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l read-data -d 'Also read, decompress and BLAKE3-check every chunk (and every pack file)'
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l boot-agent -d 'With --boot: the sign is the QEMU guest agent answering guest-ping'
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand verify" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l keep-last -d 'Keep the N newest snapshots' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l keep-hourly -d 'Keep the newest snapshot of each of the last N hours that have one' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l keep-daily -d 'Keep the newest snapshot of each of the last N days that have one' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l keep-weekly -d 'Keep the newest snapshot of each of the last N ISO weeks that have one' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l keep-monthly -d 'Keep the newest snapshot of each of the last N months that have one' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l keep-yearly -d 'Keep the newest snapshot of each of the last N years that have one' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l keep-within -d 'Keep everything newer than the VM\'s newest snapshot minus this (7d, 2w, 6m, 1y6m, 36h)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l keep-tag -d 'Keep every snapshot with this tag (repeatable)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l name -d 'Only this VM\'s snapshots' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l prune -d 'Prune right after forgetting (see `dedisk prune`; repacks above 10% unused)'
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l dry-run -d 'List every snapshot with keep/remove and the rule that keeps it; delete nothing'
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand forget" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -l only -d 'Only these VMs of the job (repeatable)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -l preview -d 'Print the plan and check everything checkable; change nothing'
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand run" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -l name -d 'Only this VM\'s snapshots' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -l snapshot -d 'Only this snapshot (id prefix, `latest` or `VM@latest`)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand mount" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l listen -d 'TCP address to listen on (NBD has no authentication: keep it on loopback)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l unix -d 'Listen on this Unix socket instead of TCP' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l socket-mode -d 'Permission bits of the Unix socket, in octal (who may connect)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l socket-owner -d 'Owner of the Unix socket: UID or UID:GID (numeric)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l max-clients -d 'Clients served at once' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l idle-timeout -d 'Seconds a client may send nothing before it is disconnected' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l all -d 'Export every disk of every snapshot (to anyone who can reach the socket)'
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand serve-nbd" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -l format -d 'Read it as this format instead of judging by content' -r -f -a "auto\t''
raw\t''
qcow2\t''
vhd\t''
vhdx\t''
vmdk\t''
vdi\t''
xva\t''"
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -l qcow2-snapshot -d 'qcow2: inspect this internal snapshot instead of the active layer' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -l extents -d 'List every allocated extent (human output shows the first 20)'
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand inspect" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -l max-unused -d 'Repack a pack when more than this percentage of it is unreferenced' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -l listing-lag -d 'How long the store may take to list an object after it was written (for stores whose listings lag; AWS S3, Garage, MinIO, Ceph and directories need 0). Prune waits up to three times this long (FORMAT.md, section 15)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -l dry-run -d 'Show what would be deleted and repacked, change nothing'
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand prune" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l to -d 'The target repository (a directory or s3://BUCKET/PREFIX). Its password comes from DEDISK_TO_PASSWORD, DEDISK_TO_PASSWORD_FILE or DEDISK_TO_PASSWORD_COMMAND, else a prompt' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l to-key-file -d 'The target\'s key file, when it is kept outside the target (DEDISK_TO_KEY_FILE)' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l name -d 'Only this VM\'s snapshots (repeat for several VMs)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l dry-run -d 'Show what would be copied and sent, change nothing'
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand copy" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -l force -d 'Also remove other hosts\' locks and unreadable lock files (never a live process\'s lock on this host)'
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand unlock" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -f -a "index" -d 'Rebuild the SQLite index from the pack files'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -f -a "snapshots" -d 'Rewrite snapshots that reference lost data: what is readable stays restorable, lost ranges become recorded holes that every restore reports'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and not __fish_seen_subcommand_from index snapshots help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from index" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from index" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from index" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from index" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from index" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from index" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from index" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from index" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -l read-data -d 'Also read every chunk (finds corrupt data, not only missing data)'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -l dry-run -d 'Only report what would be rewritten'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from snapshots" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from help" -f -a "index" -d 'Rebuild the SQLite index from the pack files'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from help" -f -a "snapshots" -d 'Rewrite snapshots that reference lost data: what is readable stays restorable, lost ranges become recorded holes that every restore reports'
complete -c dedisk -n "__fish_dedisk_using_subcommand repair; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dedisk -n "__fish_dedisk_using_subcommand metrics" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand metrics" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand metrics" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand metrics" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand metrics" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand metrics" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand metrics" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand metrics" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l listen -d 'Address to serve on. Any address but loopback needs --token-file' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l token-file -d 'A file holding the access token (at least 16 characters; readable by its owner only). Browsers open http://ADDR/?token=TOKEN once; scripts send `Authorization: Bearer TOKEN`' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l report -d 'A job\'s report file (`report =` in the job file; JOB.report.json beside it by default), whose last run is shown (repeatable)' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l stale-after -d 'A VM whose newest snapshot is older than this is shown in red' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand ui" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand completions" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand completions" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand completions" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand completions" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand completions" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand completions" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand completions" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand completions" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand manpages" -l repo -d 'The repository: a directory, or `s3://BUCKET/PREFIX` (credentials, region and endpoint from AWS_* variables or ~/.aws, as for the AWS CLI)' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand manpages" -l cache-dir -d 'This host\'s cache (the index of an encrypted or S3 repository, temporary packs); default $XDG_CACHE_HOME/dedisk. Also DEDISK_CACHE_DIR' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand manpages" -l lock-wait -d 'Seconds to wait for a conflicting repository lock (a prune, or the backups a prune waits for) before giving up' -r
complete -c dedisk -n "__fish_dedisk_using_subcommand manpages" -l key-file -d 'An encrypted repository\'s key file kept outside it (instead of REPO/keys/); with `init`, where to write the new key' -r -F
complete -c dedisk -n "__fish_dedisk_using_subcommand manpages" -l json -d 'Print machine-readable JSON on stdout (no progress bar)'
complete -c dedisk -n "__fish_dedisk_using_subcommand manpages" -s v -l verbose -d 'More log output on stderr (-v info, -vv debug)'
complete -c dedisk -n "__fish_dedisk_using_subcommand manpages" -s q -l quiet -d 'No progress bar'
complete -c dedisk -n "__fish_dedisk_using_subcommand manpages" -s h -l help -d 'Print help'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "init" -d 'Create a new repository (encrypted unless --encryption none)'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "key" -d 'Manage an encrypted repository\'s keys: list, add, remove, passwd, export, import'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "backup" -d 'Back up one VM\'s disks into a new snapshot'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "snapshots" -d 'List snapshots'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "restore" -d 'Restore a snapshot\'s disk to a file or block device'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "stats" -d 'Show repository size, deduplication and compression'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "verify" -d 'Check the repository: structure, and with --read-data every chunk\'s bytes'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "forget" -d 'Forget snapshots a retention policy does not keep (per VM)'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "run" -d 'Run a nightly job file: snapshot, back up, release, retention, report'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "mount" -d 'Mount every snapshot read-only (FUSE): VM/TIME_ID/LABEL.raw, LABEL.pN partitions'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "serve-nbd" -d 'Serve snapshot disks read-only over NBD (for qemu-img, qemu, nbd-client)'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "inspect" -d 'Show what dedisk sees in a disk image: format, size, backing chain, allocation'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "prune" -d 'Delete unreferenced data: packs nothing uses, and repack mostly-unused ones'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "copy" -d 'Copy snapshots into another repository, sending only the chunks it lacks'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "unlock" -d 'Remove the locks of processes that are provably gone (others are listed)'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "repair" -d 'Rebuild derived data from what the repository holds'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "metrics" -d 'Print the repository\'s Prometheus metrics (size, snapshots, each VM\'s newest)'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "ui" -d 'A read-only web dashboard of the repository: VMs and their last backups, nights, growth, the last verify, prune and boot tests, each snapshot\'s disks'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "completions" -d 'Print a shell completion script (bash, zsh or fish) to stdout'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "manpages" -d 'Write the man pages (dedisk.1 and one per command, dedisk-backup.1, ...) into DIR'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and not __fish_seen_subcommand_from init key backup snapshots restore stats verify forget run mount serve-nbd inspect prune copy unlock repair metrics ui completions manpages help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "list" -d 'List the key files in REPO/keys/'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "add" -d 'Add a key file with a new password (DEDISK_NEW_PASSWORD(_FILE), or a prompt)'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "remove" -d 'Remove a key file (never the last one)'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "passwd" -d 'Change the password of the key that opens the repository'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "export" -d 'Write the master key out for safekeeping: to FILE, or as a paper form on stdout'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and __fish_seen_subcommand_from key" -f -a "import" -d 'Add a key file from an exported master key (a file from `key export`, or the paper form typed back in on stdin), when every password is lost'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and __fish_seen_subcommand_from repair" -f -a "index" -d 'Rebuild the SQLite index from the pack files'
complete -c dedisk -n "__fish_dedisk_using_subcommand help; and __fish_seen_subcommand_from repair" -f -a "snapshots" -d 'Rewrite snapshots that reference lost data: what is readable stays restorable, lost ranges become recorded holes that every restore reports'
