# slurmjwt shell integration for tcsh (and csh).
#
# Installed as /etc/csh/cshrc.d/slurmjwt.csh: Debian's /etc/csh.cshrc sources every file in
# /etc/csh/cshrc.d in every tcsh (and csh) it starts. Debian does not read /etc/profile.d/*.csh.
#
#   slurmjwt refresh [OPTIONS]   renews this shell's own token variable; the token is never printed
#   slurmjwt ANYTHING ELSE       runs the slurmjwt command unchanged, redirections and pipes included
#
# At each prompt (tcsh), the token slurmjwtd keeps fresh in $SLURMJWT_TOKEN_FILE (the PAM module
# names it) becomes the variable's value once the file changes; while it has not changed, no
# process runs. SLURMJWT_FOLLOW_FILE 0 turns this off.
# With SLURMJWT_AUTORENEW set to 1 (tcsh), while no token file is followed, a prompt drawn when
# the token has less than SLURMJWT_MARGIN seconds left renews it quietly, once per token;
# nothing is tried while slurmjwtd's socket does not exist. A shell whose token variable is
# unset or empty is left alone by both.
#
# How: an alias cannot hold `if ... endif`, and `\!*` carries the command's redirections, so
# the alias (1) hands the words it was given to a small sh helper ($_sjwt_sh) in backquotes,
# which drops redirection words, runs `slurmjwt refresh --csh` if that is the command, checks
# its answer and prints a few plain words (an explicit --csh is left to the command itself, so
# that eval `slurmjwt refresh --csh` still works); (2) does the setenv; (3) ends with one command that
# carries the user's words and so their redirections and pipes: the real slurmjwt for any
# other subcommand, else a one-line sh ($_sjwt_end) that prints the messages and exits with
# the command's status.

# -- site settings: a value already set (shell variable or environment) wins --------------
# A site is best served by /etc/environment (pam_env gives it to every login and it survives
# `make install`, which overwrites this file); users may opt in in ~/.tcshrc.
if (! $?SLURMJWT_VARIABLE) setenv SLURMJWT_VARIABLE SLURM_JWT
if (! $?SLURMJWT_FOLLOW_FILE) setenv SLURMJWT_FOLLOW_FILE 1
if (! $?SLURMJWT_AUTORENEW) setenv SLURMJWT_AUTORENEW 0
if (! $?SLURMJWT_MARGIN) setenv SLURMJWT_MARGIN 600

# The helper. Modes: `cmd WORDS...` prints `ACTION STATUS NAME TOKEN EXP MESSAGE` (ACTION set,
# fail or run; MESSAGE base64 or -); `auto` prints `set NAME TOKEN EXP` or nothing; `exp`
# prints the exp claim of the current token, or -; `file PATH` prints `TOKEN NOW`, TOKEN the
# first line of PATH if it is one (else -), NOW the time in seconds. (A \! is a ! once csh has
# read it.)
set _sjwt_sh = 'n=${SLURMJWT_VARIABLE-}\
case $n in "" | [0-9]* | *[\!A-Za-z0-9_]*) n=SLURM_JWT ;; esac\
[ ${#n} -le 64 ] || n=SLURM_JWT\
jexp() {\
    p=${1#*.}; p=${p%%.*}\
    case $((${#p} % 4)) in 2) p="$p==" ;; 3) p="$p=" ;; esac\
    e=$(printf %s "$p" | tr _- /+ | base64 -d 2>/dev/null |\
        sed -n "s/.*\"exp\"[[:space:]]*:[[:space:]]*\([0-9][0-9]*\).*/\1/p")\
    case $e in "" | *[\!0-9]*) e=- ;; esac\
}\
jtok() {\
    t=${1#"setenv $n "}\
    [ "$t" != "$1" ] || return 1\
    case $t in *[\!A-Za-z0-9._-]* | .* | *. | *..*) return 1 ;; *.*.*) return 0 ;; esac\
    return 1\
}\
m=$1; shift\
case $m in\
exp) eval "t=\${$n-}"; jexp "$t"; echo "$e"; exit 0 ;;\
auto) o=$(slurmjwt refresh --csh --timeout 1 2>/dev/null) && jtok "$o" && jexp "$t" &&\
      echo "set $n $t $e"; exit 0 ;;\
file) l=; { read -r l < "$1"; } 2>/dev/null; jtok "setenv $n $l" || t=-\
      printf "%s " "$t"; exec date +%s ;;\
esac\
N=$#; k=0\
for w; do case $w in [\<\>]* | "&") break ;; esac; k=$((k + 1)); done\
i=0\
for w; do i=$((i + 1)); [ $i -gt $k ] || set -- "$@" "$w"; done\
shift $N\
case ${1-} in --socket) s=${3-} ;; --socket=*) s=${2-} ;; *) s=${1-} ;; esac\
for w; do [ "$w" != --csh ] || s=; done\
if [ "$s" != refresh ]; then echo "run 0 - - - -"; exit 0; fi\
f=$(mktemp) || { echo "fail 1 - - - -"; exit 0; }\
o=$(slurmjwt "$@" --csh 2>"$f"); r=$?\
g=-; if [ -s "$f" ]; then g=$(base64 -w0 < "$f"); fi; rm -f "$f"\
if [ $r -eq 0 ] && jtok "$o"; then jexp "$t"; echo "set 0 $n $t $e $g"\
elif [ $r -eq 0 ]; then echo "run 0 - - - -"\
else echo "fail $r - - - $g"; fi'

# The last command of `slurmjwt refresh`: ACTION STATUS NAME EXP MESSAGE, then the user's words.
set _sjwt_end = '[ "$5" = - ] || printf %s "$5" | base64 -d >&2\
if [ "$1" = set ] && [ -t 2 ]; then\
    if [ "$4" = - ]; then echo "$3 renewed" >&2\
    else echo "$3 renewed, expires $(date -d "@$4" +%H:%M 2>/dev/null)" >&2; fi\
fi\
exit "$2"'

alias slurmjwt 'set _sjwt_a = (\!*); set _sjwt_r = (`/bin/sh -c $_sjwt_sh:q slurmjwt cmd $_sjwt_a:q`); if ($#_sjwt_r < 6) set _sjwt_r = (fail 1 - - - -); if ($_sjwt_r[1] == set) setenv $_sjwt_r[3] $_sjwt_r[4]; set _sjwt_c = (/bin/sh -c $_sjwt_end:q slurmjwt $_sjwt_r[1] $_sjwt_r[2] $_sjwt_r[3] $_sjwt_r[5] $_sjwt_r[6]); if ($_sjwt_r[1] == run) set _sjwt_c = (slurmjwt); set _sjwt_a = (); set _sjwt_r = (); $_sjwt_c:q \!*'

# -- the token file and automatic renewal: tcsh runs the alias precmd before each prompt -----
# Every _sjwt_* shell variable is set here or before its use: tcsh reads an environment
# variable for $name when no shell variable of that name exists.
#
# The token file (first: while it holds a token, slurmjwtd renews that and the prompt need not).
# tcsh cannot read a file without a process, but its file inquiries are builtins: the file's
# modification time and inode (-M, -I; it is replaced by rename) are compared with those it had
# when last read, and only a change runs the helper, which reads the first line. A token other
# than the one last read there (told by its signature, :e) becomes the variable's value: a
# token `slurmjwt refresh` set stays until the file next changes. Times are whole seconds and
# a filesystem may give a new file the inode just freed, so a file read in the second it was
# changed is read again at the next prompt, until a read comes a second later. Cost per prompt
# while nothing changed: builtins only; a missing, unreadable or garbled file changes nothing.
set _sjwt_fkey = ""
set _sjwt_fsig = ""
set _sjwt_fok = 0
set _sjwt_fracy = 0
# Automatic renewal. Cost per prompt: a few builtins when off; with it on, one `date` while
# the token is fresh, and the helper only when the token changed (to read its exp) or is due
# for renewal.
set _sjwt_seen = ""
set _sjwt_exp = -
set _sjwt_tried = 0
if ($?tcsh && $?prompt) then
    set _sjwt_pc = 'set _sjwt_got = 0 _sjwt_ff = 1\
if ($?SLURMJWT_FOLLOW_FILE) eval set _sjwt_ff = \"\$SLURMJWT_FOLLOW_FILE\"\
if ($?SLURMJWT_TOKEN_FILE && "$_sjwt_ff" != 0) eval $_sjwt_follow:q\
if ($?SLURMJWT_AUTORENEW && $_sjwt_got == 0) eval $_sjwt_auto:q'
    # each prompt: has the file changed since it was last read, or was that in its second?
    # (-M and -I are -1 for a missing file)
    set _sjwt_follow = '@ _sjwt_fm = -M "$SLURMJWT_TOKEN_FILE"\
@ _sjwt_fi = -I "$SLURMJWT_TOKEN_FILE"\
if ("$_sjwt_fm $_sjwt_fi" != "$_sjwt_fkey" || $_sjwt_fracy) eval $_sjwt_fread:q\
set _sjwt_got = $_sjwt_fok'
    # a change: the helper reads a regular file's first line, and the time
    set _sjwt_fread = 'set _sjwt_fkey = "$_sjwt_fm $_sjwt_fi" _sjwt_fracy = 0 _sjwt_fok = 0 _sjwt_r = (- -)\
if ($_sjwt_fm != -1 && -f "$SLURMJWT_TOKEN_FILE") set _sjwt_fracy = 1\
if ($_sjwt_fracy) set _sjwt_r = (`/bin/sh -c $_sjwt_sh:q slurmjwt file "$SLURMJWT_TOKEN_FILE"` - -)\
if ("$_sjwt_r[2]" =~ [0-9]* && ! ("$_sjwt_r[2]" =~ *[^0-9]*)) @ _sjwt_fracy = ($_sjwt_fm >= $_sjwt_r[2])\
if ("$_sjwt_r[1]" != "-") set _sjwt_fok = 1\
if ("$_sjwt_r[1]" != "-" && "$_sjwt_r[1]:e" != "$_sjwt_fsig") eval $_sjwt_fset:q\
set _sjwt_r = ()'
    # a token other than the last one read there: the variable's value, unless unset or empty
    set _sjwt_fset = 'set _sjwt_fsig = "$_sjwt_r[1]:e" _sjwt_v = "" _sjwt_n = SLURM_JWT _sjwt_d = 0\
if ($?SLURMJWT_VARIABLE) eval set _sjwt_v = \"\$SLURMJWT_VARIABLE\"\
if ("$_sjwt_v" =~ [A-Za-z_]* && ! ("$_sjwt_v" =~ *[^A-Za-z0-9_]*) && $%_sjwt_v <= 64) set _sjwt_n = "$_sjwt_v"\
eval set _sjwt_d = \$\?$_sjwt_n\
if ($_sjwt_d) eval set _sjwt_d = \$\%$_sjwt_n\
if ($_sjwt_d) setenv $_sjwt_n $_sjwt_r[1]'
    set _sjwt_auto = 'if ("$SLURMJWT_AUTORENEW" == 1) eval $_sjwt_hook:q'
    set _sjwt_hook = 'set _sjwt_v = ""; set _sjwt_n = SLURM_JWT; set _sjwt_d = 0; set _sjwt_t = ""\
set _sjwt_go = 0; set _sjwt_now = 0; set _sjwt_left = 0; set _sjwt_m = 600; set _sjwt_s = ""\
if ($?SLURMJWT_VARIABLE) eval set _sjwt_v = \"\$SLURMJWT_VARIABLE\"\
if ("$_sjwt_v" =~ [A-Za-z_]* && ! ("$_sjwt_v" =~ *[^A-Za-z0-9_]*) && $%_sjwt_v <= 64) set _sjwt_n = "$_sjwt_v"\
eval set _sjwt_d = \$\?$_sjwt_n\
if ($_sjwt_d) eval set _sjwt_t = \"\$$_sjwt_n\"\
set _sjwt_t = "$_sjwt_t:e"\
if ("$_sjwt_t" != "$_sjwt_seen") set _sjwt_tried = 0\
if ("$_sjwt_t" != "$_sjwt_seen") set _sjwt_exp = -\
if ("$_sjwt_t" != "$_sjwt_seen" && "$_sjwt_t" != "") set _sjwt_exp = `/bin/sh -c $_sjwt_sh:q slurmjwt exp`\
set _sjwt_seen = "$_sjwt_t"\
if ("$_sjwt_t" != "" && "$_sjwt_exp" =~ [0-9]* && $_sjwt_tried == 0) set _sjwt_go = 1\
if ($?SLURMJWT_MARGIN) eval set _sjwt_m = \"\$SLURMJWT_MARGIN\"\
if ("$_sjwt_m" == "" || "$_sjwt_m" =~ *[^0-9]*) set _sjwt_m = 600\
if ($_sjwt_go) set _sjwt_now = `date +%s`\
if ($_sjwt_go) @ _sjwt_left = $_sjwt_exp - $_sjwt_now\
if ($_sjwt_go && $_sjwt_left >= $_sjwt_m) set _sjwt_go = 0\
if ($?SLURMJWT_SOCKET) eval set _sjwt_s = \"\$SLURMJWT_SOCKET\"\
if ("$_sjwt_s" == "") set _sjwt_s = /run/slurmjwt/slurmjwtd.sock\
if ($_sjwt_go) if (! -S "$_sjwt_s") set _sjwt_go = 0\
if ($_sjwt_go) set _sjwt_tried = 1\
set _sjwt_r = (- - - -)\
if ($_sjwt_go) set _sjwt_r = (`/bin/sh -c $_sjwt_sh:q slurmjwt auto` - - - -)\
if ("$_sjwt_r[1]" == set) setenv $_sjwt_r[2] $_sjwt_r[3]\
if ("$_sjwt_r[1]" == set) set _sjwt_seen = "$_sjwt_r[3]:e"\
if ("$_sjwt_r[1]" == set) set _sjwt_exp = "$_sjwt_r[4]"\
if ("$_sjwt_r[1]" == set && "$_sjwt_r[4]" =~ [0-9]*) @ _sjwt_left = $_sjwt_r[4] - $_sjwt_now\
if ("$_sjwt_r[1]" == set && $_sjwt_left >= $_sjwt_m) set _sjwt_tried = 0\
set _sjwt_r = (); set _sjwt_t = ""'
    set _sjwt_old = "`alias precmd`"
    if ("$_sjwt_old" == "") then
        alias precmd 'eval $_sjwt_pc:q'
    else if ("$_sjwt_old" =~ *_sjwt_pc*) then
        # sourced twice: already hooked
    else
        alias precmd "$_sjwt_old"'; eval $_sjwt_pc:q'
    endif
    unset _sjwt_old
endif
