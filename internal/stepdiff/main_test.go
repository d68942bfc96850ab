package main

import (
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// root is the repository, from this package's folder.
const root = "../.."

// neighbours are the steps the chapters take, each version against the one
// before.
func neighbours(t *testing.T) [][2]version {
	t.Helper()
	vs, err := versions(root)
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(vs), 2)
	var ns [][2]version
	for k := 1; k < len(vs); k++ {
		require.Equal(t, vs[k-1].num+1, vs[k].num, "the versions are numbered one after another")
		for _, v := range []*version{&vs[k-1], &vs[k]} {
			v.pkg, err = packageName(v.path)
			require.NoError(t, err)
		}
		ns = append(ns, [2]version{vs[k-1], vs[k]})
	}
	return ns
}

func output(t *testing.T, from, to version, full bool) string {
	t.Helper()
	out, err := stepDiff(root, from.dir, to.dir, full)
	require.NoError(t, err)
	return string(out)
}

// changed is a unified diff's added and removed lines.
func changed(out string) []string {
	var ls []string
	for _, l := range strings.Split(out, "\n") {
		if (strings.HasPrefix(l, "+") || strings.HasPrefix(l, "-")) &&
			!strings.HasPrefix(l, "+++ ") && !strings.HasPrefix(l, "--- ") {
			ls = append(ls, l)
		}
	}
	return ls
}

// The package's rename is not a difference: no added or removed line
// names either package, by default; with -full (where a README links the
// chapter before, and a v4 test imports v3), no package clause and no
// error prefix does.
func TestPackageNamesAreNotChanges(t *testing.T) {
	for _, n := range neighbours(t) {
		from, to := n[0], n[1]
		t.Run(from.tag()+"-"+to.tag(), func(t *testing.T) {
			names := regexp.QuoteMeta(from.pkg) + "|" + regexp.QuoteMeta(to.pkg)
			anyName := regexp.MustCompile(`\b(` + names + `)\b`)
			clauseOrPrefix := regexp.MustCompile(`\bpackage (` + names + `)(_test)?\b|\b(` + names + `):`)

			out := output(t, from, to, false)
			header := out[:strings.Index(out, "\ndiff: ")]
			require.Contains(t, header, "normalised on both sides before diffing")
			require.Contains(t, header, fmt.Sprintf("package %s and %s -> %s", from.pkg, to.pkg, pkgPlaceholder))
			require.True(t, strings.Contains(out, "\n package "+pkgPlaceholder+"\n"), "the package clause is in the diff, normalised")
			lines := changed(out)
			require.NotEmpty(t, lines)
			for _, l := range lines {
				require.NotRegexp(t, anyName, l, "a changed line names a package")
			}

			for _, l := range changed(output(t, from, to, true)) {
				require.NotRegexp(t, clauseOrPrefix, l, "-full: a changed line has a package clause or an error prefix")
			}
		})
	}
}

// Every non-test .go file at the top of each version folder has its
// place in the table: paired by name, paired by steps[n].renames, or
// declared new (steps[n].added) or gone (steps[n].removed). A file added
// to a version later fails here until it is placed.
func TestTableCoversEveryFile(t *testing.T) {
	seen := map[int]bool{}
	for _, n := range neighbours(t) {
		from, to := n[0], n[1]
		seen[to.num] = true
		a, err := listFiles(from, false)
		require.NoError(t, err)
		b, err := listFiles(to, false)
		require.NoError(t, err)
		allA, err := listFiles(from, true)
		require.NoError(t, err)
		allB, err := listFiles(to, true)
		require.NoError(t, err)
		st := steps[to.num]
		pairs := neighbourPairs(to.num, a, b)
		pairedTo := map[string]bool{}
		for _, p := range pairs {
			pairedTo[p.to] = true
		}
		for _, f := range a {
			_, paired := pairs[f]
			_, gone := st.removed[f]
			require.True(t, paired != gone, "%s/%s: %s; place it in steps[%d]: a rename to a file of %s, or removed",
				from.dir, f, placed(paired, gone), to.num, to.dir)
		}
		for _, f := range b {
			_, isNew := st.added[f]
			require.True(t, pairedTo[f] != isNew, "%s/%s: %s; place it in steps[%d]: a rename from a file of %s, or added",
				to.dir, f, placed(pairedTo[f], isNew), to.num, from.dir)
		}
		inA, inB := set(allA), set(allB)
		for _, r := range st.renames {
			require.True(t, inA[r.from], "steps[%d].renames: %s/%s does not exist", to.num, from.dir, r.from)
			require.True(t, inB[r.to], "steps[%d].renames: %s/%s does not exist", to.num, to.dir, r.to)
			require.False(t, inB[r.from], "steps[%d].renames: %s is in both versions; it pairs by name", to.num, r.from)
			require.NotEmpty(t, r.why, "steps[%d].renames: %s -> %s needs its reason", to.num, r.from, r.to)
		}
		for f, why := range st.added {
			require.True(t, inB[f], "steps[%d].added: %s/%s does not exist", to.num, to.dir, f)
			require.NotEmpty(t, why, "steps[%d].added[%s]", to.num, f)
		}
		for f, why := range st.removed {
			require.True(t, inA[f], "steps[%d].removed: %s/%s does not exist", to.num, from.dir, f)
			require.NotEmpty(t, why, "steps[%d].removed[%s]", to.num, f)
		}
	}
	for num := range steps {
		require.True(t, seen[num], "steps[%d]: no such step between version folders", num)
	}
}

func placed(paired, declared bool) string {
	if paired && declared {
		return "paired, and declared without a counterpart too"
	}
	return "neither paired nor declared"
}

// The step from v2 to v3 fits in a sitting; the counts of every step are
// logged (go test -v).
func TestLineCounts(t *testing.T) {
	for _, n := range neighbours(t) {
		from, to := n[0], n[1]
		for _, full := range []bool{false, true} {
			out := output(t, from, to, full)
			lines := strings.Count(out, "\n")
			diffLines := lines - strings.Count(out[:strings.Index(out, "\ndiff: ")+1], "\n") - 2
			mode := "default"
			if full {
				mode = "-full"
			}
			t.Logf("%s -> %s %s: %d lines (%d of them the diff)", from.dir, to.dir, mode, lines, diffLines)
			require.Contains(t, out, fmt.Sprintf("diff: %d lines\n", diffLines))
			if from.num == 2 && to.num == 3 && !full {
				// About 1,000 lines of changes and v3's two new files (the
				// idea itself, about 700 lines) shown whole.
				require.Less(t, lines, 2000, "v2 -> v3 must fit in a reader's sitting")
			}
		}
	}
}

// The header lists the pairs and the files without a counterpart, which
// the default output names but does not show; -full shows them; the
// diffs come in the chapter's reading order.
func TestHeaderAndOrder(t *testing.T) {
	ns := neighbours(t)
	v3, v4 := ns[2][0], ns[2][1]
	out := output(t, v3, v4, false)
	require.Regexp(t, `(?m)^  conn\.go -> portable_client\.go +\+\d+ -\d+: v3's client connection`, out)
	require.Regexp(t, `(?m)^new in v4: \d+, shown whole below`, out)
	require.Regexp(t, `(?m)^  loop_linux\.go \(\d+ lines\): loop is a sub-reactor`, out)
	require.Contains(t, out, "+++ b/v4-epoll-batch/loop_linux.go", "a new file is shown whole")
	require.Regexp(t, `(?m)^gone in v4: (none|\d+, named here)`, out)
	require.NotContains(t, out, "_test.go")
	require.NotContains(t, out, "README.md\n")

	full := output(t, v3, v4, true)
	require.Contains(t, full, "+++ b/v4-epoll-batch/loop_linux.go")
	require.Contains(t, full, "--- a/v3-pipeline/multiplex_test.go")
	require.Contains(t, full, "+++ b/v4-epoll-batch/README.md")

	// v3's README reads conn.go, client.go, sconn.go, server.go.
	v2 := ns[1][0]
	out = output(t, v2, v3, false)
	client := strings.Index(out, "diff --git a/v2-connpool/client.go")
	server := strings.Index(out, "diff --git a/v2-connpool/server.go")
	doc := strings.Index(out, "diff --git a/v2-connpool/doc.go")
	require.True(t, 0 < client && client < server && server < doc, "the reading order, then alphabetical")
}

// Versions further apart chain the neighbours' pairs; the other way
// round, the pairs turn round.
func TestChainedAndReversed(t *testing.T) {
	vs, err := versions(root)
	require.NoError(t, err)
	files := make([][]string, len(vs))
	for k := range vs {
		files[k], err = listFiles(vs[k], true)
		require.NoError(t, err)
	}
	has := func(ps []rename, from, to string) bool {
		for _, p := range ps {
			if p.from == from && p.to == to {
				return true
			}
		}
		return false
	}
	require.True(t, has(pairFiles(vs, files, 0, 2), "shortconn_test.go", "pipeline_test.go"))
	require.True(t, has(pairFiles(vs, files, 3, 2), "portable_client.go", "conn.go"))
}

func TestNormalise(t *testing.T) {
	n := newNamer(version{dir: "v3-pipeline", pkg: "pipeline"})
	src := "// Package pipeline is a pipeline; see ./v3-pipeline.\r\npackage pipeline_test\n\n" +
		"import pipeline \"github.com/rpcsteps/rpcsteps/v3-pipeline\"\n\n" +
		"var pipelined = pipeline.Dial /* pipeline */\n\n" +
		"const s = \"pipeline: \\\"pipeline\\\" x\" + `pipeline:\r\n`\n"
	want := "// Package PKG is a PKG; see ./vN-PKG.\r\npackage PKG_test\n\n" +
		"import PKG \"github.com/rpcsteps/rpcsteps/vN-PKG\"\n\n" +
		"var pipelined = PKG.Dial /* PKG */\n\n" +
		"const s = \"PKG: \\\"PKG\\\" x\" + `PKG:\r\n`\n"
	require.Equal(t, want, string(n.normalise("x.go", []byte(src))))
	require.Equal(t, "# vN-PKG\nPKG: an error\n", string(n.normalise("README.md", []byte("# v3-pipeline\npipeline: an error\n"))))
	binary := []byte("pipeline\x00")
	require.Equal(t, binary, n.normalise("corpus", binary))
}

func TestSynopsis(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"// Package p does one thing. And more.\npackage p\n", "Package p does one thing."},
		{"//go:build linux\n\npackage p\n\nimport \"net\"\n\n// The engine, client side.\n\n// T is a type.\ntype T net.Conn\n", "The engine, client side."},
		{"package p\n\n// v is first.\nvar v = 1\n\n// T is the file's type.\ntype T int\n", "T is the file's type."},
		{"package p\n\n// f does it.\nfunc f() {}\n", "f does it."},
		{"package p\n\nfunc f() {}\n", ""},
	} {
		require.Equal(t, c.want, synopsis("x.go", []byte(c.src)), c.src)
	}
	require.Empty(t, synopsis("README.md", []byte("# Title\n")))
}

func TestFindAndUsage(t *testing.T) {
	vs, err := versions(root)
	require.NoError(t, err)
	for _, arg := range []string{"v3", "v3-pipeline", "v3-pipeline/", "v3-pipe"} {
		i, err := find(vs, arg)
		require.NoError(t, err, arg)
		require.Equal(t, "v3-pipeline", vs[i].dir, arg)
	}
	_, err = find(vs, "v9")
	require.ErrorContains(t, err, "v1-shortconn")

	var stdout, stderr bytes.Buffer
	require.Equal(t, 2, run([]string{"-from", "v2"}, &stdout, &stderr))
	require.Contains(t, stderr.String(), "usage:")
	require.Equal(t, 2, run([]string{"-root", root, "-from", "v2", "-to", "v2"}, &stdout, &stderr))
	stdout.Reset()
	require.Equal(t, 0, run([]string{"-root", root, "-from", "v1", "-to", "v2"}, &stdout, &stderr))
	require.True(t, strings.HasPrefix(stdout.String(), "stepdiff v1-shortconn -> v2-connpool: "))
}
