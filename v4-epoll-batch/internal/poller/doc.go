// Package poller is the epoll layer of v4: one Poller per reactor, wrapping
// an epoll instance and an eventfd used to wake it, plus a Table that maps
// the data word of an event back to the reactor's per-connection value.
//
// epoll can report readiness in two ways. Edge-triggered (EPOLLET) reports a
// change: "this socket became readable", once, so the reader must drain the
// socket until EAGAIN or it will not hear about the remaining bytes again.
// Level-triggered, the default, reports a state: "this socket is readable",
// at every wait, for as long as it stays so.
//
// This package uses level-triggered mode only. A reactor that stops reading a
// connection early, to be fair to the others in the same batch or because
// the connection's output is backed up, is simply told again at the next
// wait: nothing is lost, there is no "must drain first" rule to get wrong,
// and no wake-up can be missed. The price is one more report per wait for a
// connection that the reactor chooses to leave unread, which it can avoid by
// removing that interest with Mod.
//
// The code is Linux only; on other systems the package is empty.
package poller
