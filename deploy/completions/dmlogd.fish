# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_dmlogd_global_optspecs
    string join \n config= cluster= id= data-dir= listen= member= kernel= fence= admin-socket= metrics= incarnation= check-config json h/help V/version
end

function __fish_dmlogd_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_dmlogd_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_dmlogd_using_subcommand
    set -l cmd (__fish_dmlogd_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c dmlogd -n "__fish_dmlogd_needs_command" -l config -d 'TOML configuration file' -r -F
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l cluster -d 'The cluster\'s name (overrides the file; default dmlogd)' -r
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l id -d 'This node\'s id (overrides the file)' -r
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l data-dir -d 'Data directory (overrides the file)' -r -F
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l listen -d 'gRPC listen address host:port (overrides the file)' -r
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l member -d 'An initial member ID=HOST:PORT (repeat; overrides the file\'s)' -r
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l kernel -d 'Kernel transport: netlink or unix:<path>' -r
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l fence -d 'Fence action: reboot, suspend or command:<program> [args…]' -r
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l admin-socket -d 'The admin API\'s Unix socket (default: admin.sock in the data dir)' -r -F
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l metrics -d 'Serve Prometheus metrics at http://ADDR/metrics' -r
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l incarnation -d 'The kernel\'s boot identity (default: from /proc/sys/kernel/random/boot_id). For simulated kernels only' -r
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l check-config -d 'Check the configuration and exit: 0 if it is valid, else status 2 and one line naming the problem'
complete -c dmlogd -n "__fish_dmlogd_needs_command" -l json -d 'Log as JSON lines instead of plain text'
complete -c dmlogd -n "__fish_dmlogd_needs_command" -s h -l help -d 'Print help'
complete -c dmlogd -n "__fish_dmlogd_needs_command" -s V -l version -d 'Print version'
complete -c dmlogd -n "__fish_dmlogd_needs_command" -f -a "wake-read" -d 'Read the last 4 KiB of a mirror with O_DIRECT, to wake its idle recovery (run by the daemon itself, as a separate process)'
complete -c dmlogd -n "__fish_dmlogd_needs_command" -f -a "force-new-cluster" -d 'Recover from a lost majority: with this node\'s daemon stopped, make it the only voter of its cluster (the others are added back later as new, empty nodes). Every other member must be gone for good or wiped first; without --force it only says what it would do'
complete -c dmlogd -n "__fish_dmlogd_using_subcommand wake-read" -s h -l help -d 'Print help'
complete -c dmlogd -n "__fish_dmlogd_using_subcommand force-new-cluster" -l force -d 'Do it: the other members are down and will not start again with their current data directories'
complete -c dmlogd -n "__fish_dmlogd_using_subcommand force-new-cluster" -s h -l help -d 'Print help'
