//go:build rpcsteps_portable

package epollbatch

// portableDefault: built with the tag rpcsteps_portable, every connection
// is served by the portable engine (the tests run on both engines so).
const portableDefault = true
