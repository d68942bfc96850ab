//go:build !linux

package epollbatch

import "net"

// Systems without epoll: every connection is served by the portable
// engine. These stand in for the epoll engine of server_linux.go and
// client_linux.go.

type reactorServer struct{}

func (r *reactorServer) init(serverOptions) {}

func (s *Server) startLoops() error         { return nil }
func (s *Server) adoptConn(net.Conn) bool   { return false }
func (s *Server) reactorDrain()             {}
func (s *Server) reactorOpen() int          { return 0 }
func (s *Server) reactorStop()              {}
func (s *Server) reactorStats(*ServerStats) {}

type clientReactors struct{}

func (c *Client) dialReactor(net.Conn, int) (callConn, bool, error) { return nil, false, nil }
func (c *Client) releaseReactors()                                  {}
func (c *Client) reactorStats(*Stats)                               {}
