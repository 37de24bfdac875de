# slurmjwt shell integration for bash, zsh and POSIX sh (dash).
#
# Installed as /etc/profile.d/slurmjwt.sh, which /etc/profile reads for bash and sh login
# shells. Debian's zsh does not read /etc/profile: add this line to /etc/zsh/zshrc
#     [ -r /etc/profile.d/slurmjwt.sh ] && . /etc/profile.d/slurmjwt.sh
#
#   slurmjwt refresh [OPTIONS]   renews this shell's own token variable; the token is never printed
#   slurmjwt ANYTHING ELSE       runs the slurmjwt command unchanged
#
# At each prompt (bash and zsh), the token slurmjwtd keeps fresh in $SLURMJWT_TOKEN_FILE (the
# PAM module names it) becomes the variable's value once the file changes: read with a builtin,
# no process and no socket while nothing changed. SLURMJWT_FOLLOW_FILE=0 turns this off.
# With SLURMJWT_AUTORENEW=1 (bash and zsh), while no token file is followed, a prompt drawn
# when the token has less than SLURMJWT_MARGIN seconds left renews it quietly, once per token.
# The check costs no process while the token is unchanged (bash 5 and zsh), and nothing is
# tried while slurmjwtd's socket does not exist. A shell whose token variable is unset or empty
# is left alone by both.
#
# Settings: a site is best served by /etc/environment (pam_env gives it to every login and it
# survives `make install`, which overwrites this file); users may opt in in ~/.profile.

# -- site settings: a value already set (environment, an earlier file) wins ----------------
: "${SLURMJWT_VARIABLE:=SLURM_JWT}"   # the token's variable; the same name as pam_slurmjwt's env=
: "${SLURMJWT_FOLLOW_FILE:=1}"        # 0: prompts leave $SLURMJWT_TOKEN_FILE alone
: "${SLURMJWT_AUTORENEW:=0}"          # 1: renew at a prompt once less than the margin is left
: "${SLURMJWT_MARGIN:=600}"           # seconds
export SLURMJWT_VARIABLE SLURMJWT_FOLLOW_FILE SLURMJWT_AUTORENEW SLURMJWT_MARGIN

# Everything below keeps its state in _sjwt_* shell variables (POSIX sh has no `local`). None
# may come from the environment: bash evaluates a variable's value in arithmetic, so an
# inherited _sjwt_seen_exp='a[$(cmd)]' would run cmd. Each is unset (which also unexports it)
# and set here, and numbers are checked before any arithmetic.
unset _sjwt_name _sjwt_tok _sjwt_p _sjwt_exp _sjwt_pid _sjwt_rest _sjwt_sub _sjwt_out _sjwt_rc \
    _sjwt_cur _sjwt_seen _sjwt_seen_exp _sjwt_tried _sjwt_now _sjwt_margin _sjwt_status \
    _sjwt_line _sjwt_sig _sjwt_fsig
_sjwt_name=SLURM_JWT _sjwt_tok= _sjwt_p= _sjwt_exp= _sjwt_pid= _sjwt_rest= _sjwt_sub= _sjwt_out=
_sjwt_rc=0 _sjwt_cur= _sjwt_seen= _sjwt_seen_exp= _sjwt_tried= _sjwt_now=0 _sjwt_margin=600
_sjwt_status=0 _sjwt_line= _sjwt_sig= _sjwt_fsig=

# _sjwt_name: $SLURMJWT_VARIABLE if it is a valid name, else SLURM_JWT (as the CLI decides)
_slurmjwt_name() {
    case ${SLURMJWT_VARIABLE-} in
        '' | [0-9]* | *[!A-Za-z0-9_]*) _sjwt_name=SLURM_JWT ;;
        *) _sjwt_name=$SLURMJWT_VARIABLE ;;
    esac
    if [ "${#_sjwt_name}" -gt 64 ]; then _sjwt_name=SLURM_JWT; fi
}

# true if $1 has a JWT's shape: base64url parts joined by dots, at least three
_slurmjwt_shape() {
    case $1 in
        *[!A-Za-z0-9._-]* | .* | *. | *..*) return 1 ;;
        *.*.*) return 0 ;;
    esac
    return 1
}

# _sjwt_tok: the token in $1 if $1 is exactly `export NAME=<token>` for this shell's NAME
_slurmjwt_parse() {
    _sjwt_tok=${1#"export $_sjwt_name="}
    if [ "$_sjwt_tok" = "$1" ] || ! _slurmjwt_shape "$_sjwt_tok"; then _sjwt_tok=; return 1; fi
    return 0
}

# _sjwt_exp: the exp claim of token $1 (epoch seconds), empty if it has none
_slurmjwt_exp() {
    _sjwt_p=${1#*.}
    _sjwt_p=${_sjwt_p%%.*}
    case $(( ${#_sjwt_p} % 4 )) in
        2) _sjwt_p="$_sjwt_p==" ;;
        3) _sjwt_p="$_sjwt_p=" ;;
    esac
    _sjwt_exp=$(printf '%s' "$_sjwt_p" | tr '_-' '/+' | base64 -d 2>/dev/null |
        sed -n 's/.*"exp"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p')
    case $_sjwt_exp in
        '' | *[!0-9]*) _sjwt_exp= ;;
    esac
    unset _sjwt_p
}

# true in a subshell: the process reading /proc/self/stat (a builtin's redirection, no new
# process) is not the shell whose pid is $$
_slurmjwt_subshell() {
    read -r _sjwt_pid _sjwt_rest < /proc/self/stat 2>/dev/null || return 1
    unset _sjwt_rest
    [ "$_sjwt_pid" != "$$" ]
}

slurmjwt() {
    case ${1-} in
        --socket) _sjwt_sub=${3-} ;;
        --socket=*) _sjwt_sub=${2-} ;;
        *) _sjwt_sub=${1-} ;;
    esac
    # in a subshell (eval "$(slurmjwt refresh)", a pipeline) this shell's variable cannot be
    # set: there, as for any other subcommand, the command's own output is what is wanted
    if [ "$_sjwt_sub" != refresh ] || _slurmjwt_subshell; then
        unset _sjwt_sub
        command slurmjwt "$@"
        return
    fi
    unset _sjwt_sub
    _slurmjwt_name
    _sjwt_out=$(command slurmjwt "$@")
    _sjwt_rc=$?
    if [ "$_sjwt_rc" -ne 0 ]; then
        unset _sjwt_out
        return "$_sjwt_rc"
    fi
    if ! _slurmjwt_parse "$_sjwt_out"; then
        # not a token line (refresh --help, say): shown as the command printed it
        if [ -n "$_sjwt_out" ]; then printf '%s\n' "$_sjwt_out"; fi
        unset _sjwt_out
        return 0
    fi
    unset _sjwt_out
    export "$_sjwt_name=$_sjwt_tok"
    if [ -t 2 ]; then
        _slurmjwt_exp "$_sjwt_tok"
        if [ -n "$_sjwt_exp" ]; then
            printf '%s renewed, expires %s\n' "$_sjwt_name" \
                "$(date -d "@$_sjwt_exp" +%H:%M 2>/dev/null || echo "at $_sjwt_exp")" >&2
        else
            printf '%s renewed\n' "$_sjwt_name" >&2
        fi
    fi
    _sjwt_tok=
    return 0
}

# -- the token file, read before each prompt ------------------------------------------------
# slurmjwtd keeps $SLURMJWT_TOKEN_FILE fresh while the user has a login: the token and a
# newline, replaced by rename before it expires. Its first line is read without a process
# (bash: `read`; zsh: `$(<file)`, since zsh's `read` takes a system call per byte, 0.4 ms for an
# RS256 token); a token other than the one this shell last read there becomes the variable's
# value. What the file said is compared, not what the variable holds: a token `slurmjwt
# refresh` set stays until the file next changes. An unset or empty variable is left alone (as
# by the renewal below), and so is everything when the file is missing, unreadable, not a
# regular file or holds no token. True if the file holds a token: slurmjwtd renews that.
_slurmjwt_follow() {
    _sjwt_line=
    if [ -n "${ZSH_VERSION-}" ]; then
        { _sjwt_line=$(<"$SLURMJWT_TOKEN_FILE"); } 2>/dev/null
        _sjwt_line=${_sjwt_line%%$'\n'*}
    else
        { read -r _sjwt_line < "$SLURMJWT_TOKEN_FILE"; } 2>/dev/null   # no newline: read anyway
    fi
    # a token is told by its signature, as below; bash's ${x##*.} takes 0.2 ms on a long
    # token, zsh's ${x#*.*.} as long: each shell its fast way
    if [ -n "${ZSH_VERSION-}" ]; then
        _sjwt_sig=${_sjwt_line##*.}
    else
        _sjwt_sig=${_sjwt_line#*.}; _sjwt_sig=${_sjwt_sig#*.}
    fi
    if [ -n "$_sjwt_sig" ] && [ "$_sjwt_sig" = "$_sjwt_fsig" ]; then   # the token read before
        _sjwt_line= _sjwt_sig=
        return 0
    fi
    if ! _slurmjwt_shape "$_sjwt_line"; then _sjwt_line= _sjwt_sig=; return 1; fi
    _sjwt_fsig=$_sjwt_sig
    _slurmjwt_name
    if eval "[ -n \"\${$_sjwt_name-}\" ]"; then export "$_sjwt_name=$_sjwt_line"; fi
    _sjwt_line= _sjwt_sig=
    return 0
}

# -- automatic renewal, called before each prompt -------------------------------------------
_slurmjwt_autorenew() {
    _slurmjwt_name
    eval "_sjwt_cur=\${$_sjwt_name-}"
    if [ -z "$_sjwt_cur" ]; then return 0; fi
    # a token is told from the last one by its signature (the token itself is kept nowhere)
    if [ "${_sjwt_cur##*.}" != "${_sjwt_seen-}" ]; then   # a new token: a few processes, once
        _sjwt_seen=${_sjwt_cur##*.}
        _slurmjwt_exp "$_sjwt_cur"
        _sjwt_seen_exp=$_sjwt_exp
        _sjwt_tried=
    fi
    _sjwt_cur=
    if [ -z "$_sjwt_seen_exp" ] || [ -n "$_sjwt_tried" ]; then return 0; fi
    case $_sjwt_seen_exp in *[!0-9]*) _sjwt_seen_exp=; return 0 ;; esac
    _sjwt_now=${EPOCHSECONDS-}
    case $_sjwt_now in '' | *[!0-9]*) _sjwt_now=$(date +%s) ;; esac
    case ${SLURMJWT_MARGIN-} in
        '' | *[!0-9]*) _sjwt_margin=600 ;;
        *) _sjwt_margin=$SLURMJWT_MARGIN ;;
    esac
    if [ $(( _sjwt_seen_exp - _sjwt_now )) -ge "$_sjwt_margin" ]; then return 0; fi
    # a stopped daemon costs nothing: no socket, no attempt (and no mark: try once it is back)
    if [ ! -S "${SLURMJWT_SOCKET:-/run/slurmjwt/slurmjwtd.sock}" ]; then return 0; fi
    _sjwt_tried=1
    _sjwt_out=$(command slurmjwt refresh --timeout 1 2>/dev/null) || { _sjwt_out=; return 0; }
    if _slurmjwt_parse "$_sjwt_out"; then
        export "$_sjwt_name=$_sjwt_tok"
        # the new token is this shell's token from now on; if even it is within the
        # margin (a margin longer than the lifetime), it is not renewed again
        _sjwt_seen=${_sjwt_tok##*.}
        _slurmjwt_exp "$_sjwt_tok"
        _sjwt_seen_exp=$_sjwt_exp
        if [ -z "$_sjwt_exp" ] || [ $(( _sjwt_exp - _sjwt_now )) -ge "$_sjwt_margin" ]; then
            _sjwt_tried=
        fi
    fi
    _sjwt_out=
    _sjwt_tok=
    return 0
}

_slurmjwt_prompt() {
    _sjwt_status=$?   # keep $? for the prompt and for other prompt commands
    # the file first: while it holds a token, slurmjwtd renews that and the prompt need not
    if [ "${SLURMJWT_FOLLOW_FILE-1}" = 0 ] || [ ! -f "${SLURMJWT_TOKEN_FILE-}" ] ||
        ! _slurmjwt_follow; then
        if [ "${SLURMJWT_AUTORENEW-0}" = 1 ]; then _slurmjwt_autorenew; fi
    fi
    return "$_sjwt_status"
}

case $- in
    *i*)
        if [ -n "${ZSH_VERSION-}" ]; then
            zmodload zsh/datetime 2>/dev/null   # $EPOCHSECONDS
            autoload -Uz add-zsh-hook && add-zsh-hook precmd _slurmjwt_prompt
        elif [ -n "${BASH_VERSION-}" ]; then
            case ${PROMPT_COMMAND-} in
                *_slurmjwt_prompt*) ;;
                *) PROMPT_COMMAND="${PROMPT_COMMAND:+$PROMPT_COMMAND
}_slurmjwt_prompt" ;;
            esac
        fi
        ;;
esac
