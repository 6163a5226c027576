// Package layerfile reads Layerfiles: it decodes the file (SPEC §1), joins
// continued lines, parses every directive of SPEC §2 into an AST that keeps
// each instruction's exact text and position, and reports every problem it
// finds as a Diagnostic with a position, a message and, where a fix is likely,
// a hint. Parse never stops at the first problem.
//
// Decisions on points SPEC.md leaves open:
//
//   - Positions: lines and columns are 1-based; columns count characters
//     (code points), a tab counts as one. A UTF-8 byte-order mark is not
//     counted. Errors about an argument point at the argument; errors about
//     a missing argument point just after the keyword.
//   - Encoding: a UTF-16 file (with a byte-order mark, or ASCII text with a
//     NUL in every other byte) is one error at 1:1 and nothing else is
//     parsed; so is a NUL byte anywhere (at its position). An invalid UTF-8
//     byte is an error at its position; the rest of the file is still
//     parsed.
//   - Instruction.Source joins the physical lines with "\n" whatever the file
//     used ("\r\n", "\r"). Instruction.Text drops a trailing comment where
//     comments are allowed, so editing only a comment does not change the
//     cache key.
//   - Several blank lines in a row inside a continued line give one warning.
//     A continuation that ends inside a comment (a '#' starting a word
//     outside quotes: a bash comment in RUN*, a trailing comment elsewhere)
//     is a warning naming the swallowed lines.
//   - Trailing comments: a '#' at the start of a word, outside quotes. In
//     RUN*, BUTTON and SKIP REMAINING IF, '#' is part of the text.
//   - Quoting (COPY, WORKDIR, CACHE, WAIT, SETUP FILE, CLONE, LABEL, SKIP
//     values): '...' is literal; inside "..." a backslash escapes " and \
//     only; outside quotes a backslash escapes any character.
//   - FROM: "vm/<distro>:<version>" is FromVM; anything else with a ':'
//     must be "<library>/<name>:<tag>" (FromLibrary) — a bare Docker name
//     such as "ubuntu:18.04" is an error suggesting "vm/ubuntu:18.04";
//     anything else is a path (FromPath), whose existence package plan
//     checks. A bare distribution name ("ubuntu") is an error.
//   - ENV: if the first word has no '=', the legacy form "ENV NAME value..."
//     takes the rest of the line (trimmed) as the value, as Docker does.
//   - EXPOSE WEBSITE: scheme and host are case-insensitive
//     (HTTPS://LOCALHOST:443 is accepted); a location ending in a bare "/"
//     is accepted; Path defaults to "/"; path and rewrite must start with
//     "/"; only localhost is accepted as host (127.0.0.1 is not).
//   - MEMORY: units K, M, G in either case, powers of 1024; no unit means
//     bytes. Less than 128M or more than 1024G is an error. "2GB", "2Gi"
//     are errors hinting "2G".
//   - SPLIT: 1 to 1000 copies. CHECKPOINT names: letters, digits, '.', '_'
//     and '-', starting with a letter or digit; "Disabled" in another case
//     is an error. USER names follow useradd's default rule
//     ([a-z_][a-z0-9_-]*, at most 32).
//   - LABEL takes one key=value per line; the display_name value is the
//     rest of the line (quotes removed).
//   - CLONE: DEFAULT=<branch> must come right after the URL; with no source
//     the whole repository is copied.
//   - SKIP REMAINING IF: a value containing "&NAME=" or "&NAME!=" (as in
//     "A=x&B=y") is a warning hinting AND; "OR", "&&", "||" are errors.
//   - Warnings: MEMORY after the first RUN*; a foreground RUN of a known
//     server command (see ForegroundServer) when an EXPOSE WEBSITE follows;
//     "RUN BACKGROUD x" (a modifier misspelt by at most two letters); a SKIP
//     REMAINING IF variable that no ENV/BUILD ENV/SECRET ENV of the file sets
//     and whose name is within two letters of a built-in one
//     (LAYER_CI_BRANCH for LAYERCI_BRANCH).
//   - FROM placement: a file without instructions, without FROM, with an
//     instruction before FROM, or with a second FROM is an error. Lines whose
//     keyword was recognised count for these checks even if their
//     arguments were bad.
package layerfile
