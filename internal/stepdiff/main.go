// Command stepdiff prints the step between two versions of the tutorial as
// a reader wants to see it: what the chapter changed, not the renames. It
// is what `make diff FROM=v2 TO=v3` runs:
//
//	go run ./internal/stepdiff -from v2 -to v3 [-full]
//
// -from and -to are version folders or their prefixes (v1 is
// v1-shortconn). By default only the non-test .go files at the top of each
// folder are compared: no tests, no example or sub-packages, no README.
// With -full, every file is.
//
// Before diffing, both sides are copied with the package's own name (in
// the package clause, identifiers, strings and comments: "package
// pipeline", the "pipeline:" prefix of its errors) and its folder's name
// replaced by one placeholder, so that the rename from one version to the
// next is not a difference. Files are paired by role: the same name first,
// then the table in this file (steps) for the files whose names differ
// between neighbouring versions, and, between versions further apart,
// the neighbours' pairs chained. A file with no counterpart is new or gone:
// named in the header with its line count and its doc comment's first
// sentence; a new file is shown whole (it is often where the step's idea
// lives), a file that went only with -full.
//
// The output is a short header (the files paired, new and gone, and the
// diff's line count), then one unified diff per pair from git diff
// --no-index, in the chapter's reading order when its README has a "The
// code, in reading order" section, else alphabetically.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/doc"
	"go/parser"
	"go/scanner"
	"go/token"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"
)

// A rename pairs a file with its counterpart of another name in the next
// version.
type rename struct{ from, to, why string }

// A step is what the table knows about one version against the one
// before it. Files of the same name pair by themselves; renames pairs the
// others, and added and removed declare the files that have no
// counterpart (with what they are), so that the test can tell a file
// nobody has placed yet.
type step struct {
	renames []rename
	added   map[string]string // new in this version
	removed map[string]string // gone in this version
}

// steps is the pairing table, by the number of the later version. Every
// non-test .go file at the top of a version folder is paired by name, paired
// here, or declared added or removed here; the test checks it.
var steps = map[int]step{
	2: {
		renames: []rename{
			{"shortconn_test.go", "connpool_test.go", "the package's own tests, named after the package"},
		},
		added: map[string]string{
			"pool.go":            "the pool that keeps connections open between calls",
			"conncheck_unix.go":  "the peek that finds a pooled connection dead before it is reused",
			"conncheck_other.go": "the peek's stand-in on systems without it",
		},
	},
	3: {
		renames: []rename{
			{"connpool_test.go", "pipeline_test.go", "the package's own tests, named after the package"},
		},
		added: map[string]string{
			"conn.go":  "the client's multiplexed connection, in place of the pool",
			"sconn.go": "the server's connection: a reader, a goroutine per request, a writer",
		},
		removed: map[string]string{
			"pool.go":            "the connection pool; one multiplexed connection replaces it",
			"conncheck_unix.go":  "the peek before reuse; pings on the live connection replace it",
			"conncheck_other.go": "the peek's stand-in; pings on the live connection replace it",
		},
	},
	4: {
		renames: []rename{
			{"conn.go", "portable_client.go", "v3's client connection, kept as the portable engine's: the same methods, v4's options"},
			{"sconn.go", "portable_server.go", "v3's server connection, kept as the portable engine's: the same reader and writer, requests go to v4's workers"},
		},
		added: map[string]string{
			"loop_linux.go":       "the sub-reactor: one goroutine, one epoll",
			"conn_linux.go":       "a reactor's connection, server's and client's: read, parse, ring, writev",
			"server_linux.go":     "the server's epoll engine: sockets handed to sub-reactors",
			"client_linux.go":     "the client's epoll engine: the reactors all clients share",
			"clientconn_linux.go": "the client's pending map over a reactor connection (v3's conn.go pairs with portable_client.go, which keeps its code)",
			"engine_default.go":   "the default engine without the rpcsteps_portable tag",
			"engine_portable.go":  "the default engine with the rpcsteps_portable tag",
			"engine_other.go":     "stand-ins for the epoll engine on systems without epoll",
			"buffers.go":          "the frame buffer pool, moved out of v3's conn.go and sconn.go for both engines",
			"batch.go":            "the requests of one read that share a worker, and each method's mean time",
			"types.go":            "Call, the errors and the Stats types, moved out of client.go and server.go for both engines",
			"interceptor.go":      "client and server interceptors, new API",
			"metadata.go":         "per-call metadata, new API",
			"race_linux.go":       "under -race, what writev and read tell the race detector (unix.Writev and unix.Read did it before)",
			"norace_linux.go":     "without -race, the same hooks as nothing",
		},
	},
}

// The placeholders both sides' names become.
const (
	pkgPlaceholder = "PKG"
	dirPlaceholder = "vN-PKG"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("stepdiff", flag.ContinueOnError)
	fl.SetOutput(stderr)
	from := fl.String("from", "", "the earlier version: a folder or its prefix, such as v2")
	to := fl.String("to", "", "the later version, such as v3")
	full := fl.Bool("full", false, "every file: tests, READMEs, examples and sub-packages")
	root := fl.String("root", "", "the repository's root (default: the nearest parent with go.mod)")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if *from == "" || *to == "" || fl.NArg() > 0 {
		fmt.Fprintln(stderr, "usage: stepdiff -from v1 -to v2 [-full]")
		return 2
	}
	if *root == "" {
		r, err := findRoot()
		if err != nil {
			fmt.Fprintln(stderr, "stepdiff:", err)
			return 2
		}
		*root = r
	}
	out, err := stepDiff(*root, *from, *to, *full)
	if err != nil {
		fmt.Fprintln(stderr, "stepdiff:", err)
		return 2
	}
	if _, err := stdout.Write(out); err != nil {
		return 1
	}
	return 0
}

// findRoot is the nearest directory, from the working one up, with a go.mod.
func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod in the working directory or above; give -root")
		}
		dir = parent
	}
}

// A version is one version folder.
type version struct {
	num  int
	dir  string // the folder's name: v3-pipeline
	path string // its path
	pkg  string // its package's name: pipeline
}

func (v version) tag() string { return "v" + strconv.Itoa(v.num) }

var versionDir = regexp.MustCompile(`^v([0-9]+)-`)

// versions lists the version folders under root, by number.
func versions(root string) ([]version, error) {
	ents, err := os.ReadDir(root)
	if err != nil {
		return nil, err
	}
	var vs []version
	for _, e := range ents {
		m := versionDir.FindStringSubmatch(e.Name())
		if !e.IsDir() || m == nil {
			continue
		}
		n, _ := strconv.Atoi(m[1])
		vs = append(vs, version{num: n, dir: e.Name(), path: filepath.Join(root, e.Name())})
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].num < vs[j].num })
	for i := 1; i < len(vs); i++ {
		if vs[i].num == vs[i-1].num {
			return nil, fmt.Errorf("two folders for v%d: %s and %s", vs[i].num, vs[i-1].dir, vs[i].dir)
		}
	}
	if len(vs) == 0 {
		return nil, fmt.Errorf("no version folders (v1-..., v2-...) in %s", root)
	}
	return vs, nil
}

// find picks the version a prefix names: the folder itself, or the one
// whose name is the prefix and a dash and more.
func find(vs []version, prefix string) (int, error) {
	prefix = filepath.Base(filepath.Clean(prefix))
	var names []string
	for i, v := range vs {
		names = append(names, v.dir)
		if v.dir == prefix || v.tag() == prefix {
			return i, nil
		}
	}
	var match []int
	for i, v := range vs {
		if strings.HasPrefix(v.dir, prefix) {
			match = append(match, i)
		}
	}
	if len(match) == 1 {
		return match[0], nil
	}
	return 0, fmt.Errorf("%q names none of the version folders, or more than one: %s", prefix, strings.Join(names, " "))
}

// packageName is the name in the package clause of dir's .go files.
func packageName(dir string) (string, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		return "", err
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		pf, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.PackageClauseOnly)
		if err != nil {
			return "", err
		}
		return pf.Name.Name, nil
	}
	return "", fmt.Errorf("%s has no Go package", dir)
}

// listFiles is the files compared in v, as slash paths relative to it: the
// non-test .go files at its top, or with full every file.
func listFiles(v version, full bool) ([]string, error) {
	var files []string
	if !full {
		ents, err := os.ReadDir(v.path)
		if err != nil {
			return nil, err
		}
		for _, e := range ents {
			n := e.Name()
			if e.Type().IsRegular() && strings.HasSuffix(n, ".go") && !strings.HasSuffix(n, "_test.go") {
				files = append(files, n)
			}
		}
		return files, nil
	}
	err := filepath.WalkDir(v.path, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return err
		}
		rel, err := filepath.Rel(v.path, p)
		files = append(files, filepath.ToSlash(rel))
		return err
	})
	return files, err
}

// An entry is a pair of files, or a file new or gone (from or to empty).
type entry struct {
	from, to string
	why      string // why the two pair, for a rename
	note     string // what a new or gone file is, from the table
	lines    int    // a new or gone file's line count
	synopsis string // its doc comment's first sentence
	rank     int    // place in the reading order
	tier     int    // kind of file, to order what the reading order omits
	plus     int    // the diff's added lines
	minus    int    // and removed ones
	diff     []byte
}

func (e *entry) name() string {
	if e.to != "" {
		return e.to
	}
	return e.from
}

// neighbourPairs pairs the files of version num-1 (a) with those of num
// (b): by name first, then by the table.
func neighbourPairs(num int, a, b []string) map[string]rename {
	inA, inB := set(a), set(b)
	m := map[string]rename{}
	used := map[string]bool{}
	for _, f := range a {
		if inB[f] {
			m[f] = rename{from: f, to: f}
			used[f] = true
		}
	}
	for _, r := range steps[num].renames {
		if inA[r.from] && inB[r.to] && m[r.from].to == "" && !used[r.to] {
			m[r.from] = r
			used[r.to] = true
		}
	}
	return m
}

// pairFiles pairs the files of versions vs[i] and vs[j]: by name first,
// then the table's renames, chained through the versions in between.
func pairFiles(vs []version, files [][]string, i, j int) []rename {
	if i > j {
		ps := pairFiles(vs, files, j, i)
		for k := range ps {
			ps[k].from, ps[k].to = ps[k].to, ps[k].from
		}
		return ps
	}
	// chain[f] is where file f of vs[i] has got to, and why.
	chain := map[string]rename{}
	for _, f := range files[i] {
		chain[f] = rename{from: f, to: f}
	}
	for k := i + 1; k <= j; k++ {
		step := neighbourPairs(vs[k].num, files[k-1], files[k])
		next := map[string]rename{}
		for f, c := range chain {
			s, ok := step[c.to]
			if !ok {
				continue
			}
			why := c.why
			if s.why != "" {
				if why != "" {
					why += "; then "
				}
				why += s.why
			}
			next[f] = rename{from: f, to: s.to, why: why}
		}
		chain = next
	}
	inTo := set(files[j])
	var ps []rename
	usedFrom, usedTo := map[string]bool{}, map[string]bool{}
	for _, f := range files[i] {
		if inTo[f] {
			ps = append(ps, rename{from: f, to: f})
			usedFrom[f], usedTo[f] = true, true
		}
	}
	for _, f := range files[i] {
		if c, ok := chain[f]; ok && !usedFrom[f] && !usedTo[c.to] {
			ps = append(ps, c)
			usedFrom[f], usedTo[c.to] = true, true
		}
	}
	return ps
}

func set(s []string) map[string]bool {
	m := make(map[string]bool, len(s))
	for _, x := range s {
		m[x] = true
	}
	return m
}

// note is what the table says a file of version num is, when it has no
// counterpart.
func note(num int, file string) string {
	if n := steps[num].added[file]; n != "" {
		return n
	}
	return steps[num+1].removed[file]
}

// stepDiff is the whole output for the step from one version to another.
func stepDiff(root, fromArg, toArg string, full bool) ([]byte, error) {
	vs, err := versions(root)
	if err != nil {
		return nil, err
	}
	i, err := find(vs, fromArg)
	if err != nil {
		return nil, err
	}
	j, err := find(vs, toArg)
	if err != nil {
		return nil, err
	}
	if i == j {
		return nil, fmt.Errorf("-from and -to are both %s", vs[i].dir)
	}
	lo, hi := min(i, j), max(i, j)
	files := make([][]string, len(vs))
	for k := lo; k <= hi; k++ {
		if files[k], err = listFiles(vs[k], full); err != nil {
			return nil, err
		}
	}
	from, to := vs[i], vs[j]
	if from.pkg, err = packageName(from.path); err != nil {
		return nil, err
	}
	if to.pkg, err = packageName(to.path); err != nil {
		return nil, err
	}

	tmp, err := os.MkdirTemp("", "stepdiff-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	nFrom, nTo := newNamer(from), newNamer(to)
	src := map[string][]byte{} // "a/" or "b/" and the file: its text
	load := func(side string, v version, nm *namer, f string) error {
		b, err := os.ReadFile(filepath.Join(v.path, filepath.FromSlash(f)))
		if err != nil {
			return err
		}
		src[side+f] = b
		dst := filepath.Join(tmp, v.dir, filepath.FromSlash(f))
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		return os.WriteFile(dst, nm.normalise(f, b), 0o644)
	}
	for _, f := range files[i] {
		if err := load("a/", from, nFrom, f); err != nil {
			return nil, err
		}
	}
	for _, f := range files[j] {
		if err := load("b/", to, nTo, f); err != nil {
			return nil, err
		}
	}

	var entries []*entry
	paired := map[string]bool{}
	for _, p := range pairFiles(vs, files, i, j) {
		entries = append(entries, &entry{from: p.from, to: p.to, why: p.why})
		paired["a/"+p.from], paired["b/"+p.to] = true, true
	}
	var added, removed []*entry
	for _, f := range files[i] {
		if !paired["a/"+f] {
			b := src["a/"+f]
			e := &entry{from: f, note: note(from.num, f), lines: countLines(b), synopsis: synopsis(f, b)}
			removed = append(removed, e)
		}
	}
	for _, f := range files[j] {
		if !paired["b/"+f] {
			b := src["b/"+f]
			e := &entry{to: f, note: note(to.num, f), lines: countLines(b), synopsis: synopsis(f, b)}
			added = append(added, e)
		}
	}

	ordTo, ordFrom := readingOrder(to.path), readingOrder(from.path)
	for _, list := range [][]*entry{entries, added, removed} {
		for _, e := range list {
			e.rank = len(ordTo) + len(ordFrom)
			if r := rankIn(ordTo, e.to); r >= 0 {
				e.rank = r
			} else if r := rankIn(ordFrom, e.from); r >= 0 {
				e.rank = len(ordTo) + r
			}
			e.tier = tier(e.name())
		}
		sort.SliceStable(list, func(a, b int) bool {
			x, y := list[a], list[b]
			if x.rank != y.rank {
				return x.rank < y.rank
			}
			if x.tier != y.tier {
				return x.tier < y.tier
			}
			return x.name() < y.name()
		})
	}

	// A file new in this step is shown whole: it is often where the idea
	// lives (v3's conn.go and sconn.go). A file that went is only named,
	// unless -full.
	shown := append(append([]*entry(nil), entries...), added...)
	if full {
		shown = append(shown, removed...)
	}
	var body bytes.Buffer
	for _, e := range shown {
		a, b := "/dev/null", "/dev/null"
		if e.from != "" {
			a = from.dir + "/" + e.from
		}
		if e.to != "" {
			b = to.dir + "/" + e.to
		}
		if e.diff, err = gitDiff(tmp, a, b); err != nil {
			return nil, err
		}
		e.plus, e.minus = diffStat(e.diff)
		body.Write(e.diff)
	}

	var h bytes.Buffer
	what := "non-test .go files at the top of each folder (-full, or make diff FULL=1: every file)"
	if full {
		what = "every file: code, tests, READMEs, examples, sub-packages"
	}
	fmt.Fprintf(&h, "stepdiff %s -> %s: %s\n", from.dir, to.dir, what)
	fmt.Fprintf(&h, "normalised on both sides before diffing, so that the rename is not a difference:\n")
	fmt.Fprintf(&h, "  package %s and %s -> %s, folder %s and %s -> %s (package clauses, identifiers, strings, comments)\n",
		from.pkg, to.pkg, pkgPlaceholder, from.dir, to.dir, dirPlaceholder)
	fmt.Fprintf(&h, "paired: %d\n", len(entries))
	w := 0
	for _, e := range entries {
		w = max(w, len(pairName(e)))
	}
	for _, e := range entries {
		change := "unchanged"
		if e.plus+e.minus > 0 {
			change = fmt.Sprintf("+%d -%d", e.plus, e.minus)
		}
		line := fmt.Sprintf("  %-*s  %s", w, pairName(e), change)
		if e.why != "" {
			line += ": " + e.why
		}
		fmt.Fprintln(&h, line)
	}
	list := func(label string, es []*entry, always bool) {
		how := "named here; -full shows them"
		if full || always {
			how = "shown whole below"
		}
		if len(es) == 0 {
			fmt.Fprintf(&h, "%s: none\n", label)
			return
		}
		fmt.Fprintf(&h, "%s: %d, %s\n", label, len(es), how)
		for _, e := range es {
			line := fmt.Sprintf("  %s (%d lines)", e.name(), e.lines)
			if s := firstOf(e.synopsis, e.note); s != "" {
				line += ": " + s
			}
			fmt.Fprintln(&h, line)
		}
	}
	list("new in "+to.tag(), added, true)
	list("gone in "+to.tag(), removed, false)
	fmt.Fprintf(&h, "order: %s\n", orderNote(from, to, ordFrom, ordTo))
	fmt.Fprintf(&h, "diff: %d lines\n\n", countLines(body.Bytes()))
	h.Write(body.Bytes())
	return h.Bytes(), nil
}

func firstOf(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}

func pairName(e *entry) string {
	if e.from == e.to {
		return e.from
	}
	return e.from + " -> " + e.to
}

func orderNote(from, to version, ordFrom, ordTo []string) string {
	var parts []string
	if len(ordTo) > 0 {
		parts = append(parts, "the reading order of "+to.dir+"/README.md")
	}
	if len(ordFrom) > 0 {
		parts = append(parts, "the reading order of "+from.dir+"/README.md")
	}
	parts = append(parts, "then the other code, tests, sub-packages and other files, each alphabetically")
	return strings.Join(parts, ", ")
}

// tier orders the files the reading order leaves out: the code at the
// top, its tests, the files below (examples, sub-packages), everything else.
func tier(f string) int {
	switch {
	case !strings.HasSuffix(f, ".go"):
		return 3
	case strings.Contains(f, "/"):
		return 2
	case strings.HasSuffix(f, "_test.go"):
		return 1
	}
	return 0
}

var (
	heading  = regexp.MustCompile(`^(#+)\s+(.*)$`)
	backtick = regexp.MustCompile("`([^`\\s]+)`")
)

// readingOrder is the files and folders named in code spans, in order, in
// the section of dir's README.md whose heading says "reading order".
func readingOrder(dir string) []string {
	b, err := os.ReadFile(filepath.Join(dir, "README.md"))
	if err != nil {
		return nil
	}
	var order []string
	seen := map[string]bool{}
	level := 0 // of the section's heading; 0 outside it
	for _, line := range strings.Split(string(b), "\n") {
		if m := heading.FindStringSubmatch(line); m != nil {
			if level > 0 && len(m[1]) <= level {
				break
			}
			if level == 0 && strings.Contains(strings.ToLower(m[2]), "reading order") {
				level = len(m[1])
			}
			continue
		}
		if level == 0 {
			continue
		}
		for _, m := range backtick.FindAllStringSubmatch(line, -1) {
			p := strings.TrimSuffix(m[1], "/")
			if seen[p] {
				continue
			}
			if matches, _ := filepath.Glob(filepath.Join(dir, filepath.FromSlash(p))); len(matches) > 0 {
				seen[p] = true
				order = append(order, p)
			}
		}
	}
	return order
}

// rankIn is the place in order of the first entry that names f (the file,
// a folder above it, or a pattern matching it); -1 if none does.
func rankIn(order []string, f string) int {
	if f == "" {
		return -1
	}
	for i, p := range order {
		if ok, _ := path.Match(p, f); ok || strings.HasPrefix(f, p+"/") {
			return i
		}
	}
	return -1
}

// gitDiff is git's unified diff of a and b (paths in dir, or /dev/null).
func gitDiff(dir, a, b string) ([]byte, error) {
	cmd := exec.Command("git", "-c", "core.quotepath=false", "diff", "--no-index", "--no-color",
		"--no-ext-diff", "--no-textconv", "--diff-algorithm=histogram", "-U3",
		"--src-prefix=a/", "--dst-prefix=b/", "--", a, b)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "GIT_PAGER=cat")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 { // the files differ
		err = nil
	}
	if err != nil {
		return nil, fmt.Errorf("git diff --no-index %s %s: %v: %s", a, b, err, strings.TrimSpace(stderr.String()))
	}
	return out, nil
}

// diffStat counts a unified diff's added and removed lines.
func diffStat(d []byte) (plus, minus int) {
	for _, l := range strings.Split(string(d), "\n") {
		switch {
		case strings.HasPrefix(l, "+++ "), strings.HasPrefix(l, "--- "):
		case strings.HasPrefix(l, "+"):
			plus++
		case strings.HasPrefix(l, "-"):
			minus++
		}
	}
	return plus, minus
}

func countLines(b []byte) int {
	n := bytes.Count(b, []byte("\n"))
	if len(b) > 0 && b[len(b)-1] != '\n' {
		n++
	}
	return n
}

// A namer replaces one version's package name and folder name with the
// placeholders.
type namer struct {
	pkg  string
	dir  *regexp.Regexp // the folder's name
	word *regexp.Regexp // the package's name, as a word
}

func newNamer(v version) *namer {
	return &namer{
		pkg:  v.pkg,
		dir:  regexp.MustCompile(`\b` + regexp.QuoteMeta(v.dir) + `\b`),
		word: regexp.MustCompile(`\b` + regexp.QuoteMeta(v.pkg) + `\b`),
	}
}

// text normalises prose: a comment, a string, a file that is not Go.
func (n *namer) text(b []byte) []byte {
	b = n.dir.ReplaceAllLiteral(b, []byte(dirPlaceholder))
	return n.word.ReplaceAllLiteral(b, []byte(pkgPlaceholder))
}

// normalise is file f's text with the names replaced: in a Go file the
// identifiers that are the package's name (the package clause, an
// external test's qualifier) and the comments and strings; in any other
// text file, everywhere; a binary file is left alone.
func (n *namer) normalise(f string, b []byte) []byte {
	if !utf8.Valid(b) || bytes.IndexByte(b, 0) >= 0 {
		return b
	}
	if !strings.HasSuffix(f, ".go") {
		return n.text(b)
	}
	fset := token.NewFileSet()
	file := fset.AddFile(f, -1, len(b))
	var s scanner.Scanner
	bad := false
	s.Init(file, b, func(token.Position, string) { bad = true }, scanner.ScanComments)
	var out bytes.Buffer
	last := 0
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			break
		}
		off := file.Offset(pos)
		var repl []byte
		end := off + len(lit)
		switch tok {
		case token.IDENT:
			switch lit {
			case n.pkg:
				repl = []byte(pkgPlaceholder)
			case n.pkg + "_test":
				repl = []byte(pkgPlaceholder + "_test")
			default:
				continue
			}
		case token.COMMENT, token.STRING:
			if tok == token.COMMENT || lit[0] == '`' {
				end = tokenEnd(b, off)
			}
			repl = n.text(b[off:end])
		default:
			continue
		}
		out.Write(b[last:off])
		out.Write(repl)
		last = end
	}
	if bad {
		return n.text(b)
	}
	out.Write(b[last:])
	return out.Bytes()
}

// tokenEnd is where the comment or raw string at off ends in b (the
// scanner's literal drops their carriage returns, so its length may not
// say).
func tokenEnd(b []byte, off int) int {
	rest := b[off:]
	var i int
	switch {
	case bytes.HasPrefix(rest, []byte("//")):
		if i = bytes.IndexByte(rest, '\n'); i < 0 {
			i = len(rest)
		}
	case bytes.HasPrefix(rest, []byte("/*")):
		if i = bytes.Index(rest[2:], []byte("*/")); i < 0 {
			i = len(rest)
		} else {
			i += 4
		}
	default: // a raw string
		if i = bytes.IndexByte(rest[1:], '`'); i < 0 {
			i = len(rest)
		} else {
			i += 2
		}
	}
	return off + i
}

// synopsis is the first sentence of a Go file's doc comment: the comment
// before its package clause; else one that stands alone before the first
// declaration (after the imports), as a file's own comment does; else the
// doc comment of its first type, else of its first declaration.
func synopsis(f string, b []byte) string {
	if !strings.HasSuffix(f, ".go") {
		return ""
	}
	pf, err := parser.ParseFile(token.NewFileSet(), f, b, parser.ParseComments)
	if err != nil {
		return ""
	}
	var text string
	if pf.Doc != nil {
		text = pf.Doc.Text()
	}
	var first ast.Decl
	attached := map[*ast.CommentGroup]bool{}
	var firstType, firstDoc *ast.CommentGroup
	for _, d := range pf.Decls {
		g, isGen := d.(*ast.GenDecl)
		if isGen && g.Tok == token.IMPORT {
			continue
		}
		if first == nil {
			first = d
		}
		dc := declDoc(d)
		attached[dc] = true
		if firstDoc == nil && dc != nil {
			firstDoc = dc
		}
		if firstType == nil && isGen && g.Tok == token.TYPE {
			firstType = dc
		}
	}
	if text == "" {
		for _, cg := range pf.Comments {
			if cg.Pos() < pf.Name.End() || attached[cg] || inImports(pf, cg) {
				continue
			}
			if first != nil && cg.Pos() > first.Pos() {
				break
			}
			if text = cg.Text(); text != "" {
				break
			}
		}
	}
	if text == "" && firstType != nil {
		text = firstType.Text()
	}
	if text == "" && firstDoc != nil {
		text = firstDoc.Text()
	}
	return new(doc.Package).Synopsis(text)
}

// declDoc is a declaration's doc comment, or its only spec's.
func declDoc(d ast.Decl) *ast.CommentGroup {
	switch d := d.(type) {
	case *ast.FuncDecl:
		return d.Doc
	case *ast.GenDecl:
		if d.Doc != nil || len(d.Specs) == 0 {
			return d.Doc
		}
		switch s := d.Specs[0].(type) {
		case *ast.TypeSpec:
			return s.Doc
		case *ast.ValueSpec:
			return s.Doc
		}
	}
	return nil
}

func inImports(pf *ast.File, cg *ast.CommentGroup) bool {
	for _, d := range pf.Decls {
		if g, ok := d.(*ast.GenDecl); ok && g.Tok == token.IMPORT && cg.Pos() >= g.Pos() && cg.End() <= g.End() {
			return true
		}
	}
	return false
}
