package iscsi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime/debug"
	"sync"
	"time"
)

// conn is one TCP connection: the login phase, then the full feature phase
// of its session (one connection per session).
type conn struct {
	srv       *Server
	nc        net.Conn
	log       *slog.Logger
	br        *bufio.Reader
	closeOnce sync.Once

	hdr header
	ahs [maxAHSLen]byte
}

func newConn(srv *Server, nc net.Conn) *conn {
	return &conn{
		srv: srv,
		nc:  nc,
		log: srv.log.With("remote", nc.RemoteAddr().String()),
		br:  bufio.NewReaderSize(nc, 64<<10),
	}
}

// close closes the socket; the connection's goroutine notices and ends the
// session. Safe to call from any goroutine, any number of times.
func (c *conn) close() {
	c.closeOnce.Do(func() { _ = c.nc.Close() })
}

// serve runs the connection until it ends. A panic is a bug; it is logged
// with its stack and ends only this connection.
func (c *conn) serve(ctx context.Context) {
	defer c.close()
	defer func() {
		if r := recover(); r != nil {
			c.log.Error("iscsi connection panic", "panic", r, "stack", string(debug.Stack()))
		}
	}()
	stop := context.AfterFunc(ctx, c.close)
	defer stop()

	sess, err := c.login()
	if err != nil {
		var le *loginError
		switch {
		case errors.As(err, &le) && le.status == loginMovedTemporarily:
			c.log.Debug("iscsi login redirected", "reason", le.reason)
		case !isDisconnect(err):
			c.log.Info("iscsi login failed", "err", err)
		}
		return
	}
	sess.serve(ctx)
}

// isDisconnect reports errors that only say the peer went away.
func isDisconnect(err error) bool {
	return errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, net.ErrClosed)
}

// login runs the login phase and returns the admitted session.
func (c *conn) login() (*session, error) {
	srv := c.srv
	if err := c.nc.SetDeadline(time.Now().Add(srv.cfg.LoginTimeout)); err != nil {
		return nil, err
	}
	m := newLoginMachine(srv.ours, uint32(srv.cfg.QueueDepth), loginEnv{
		lookupTarget:   srv.lookupTarget,
		lookupRedirect: srv.lookupRedirect,
		sessionExists:  srv.sessionExists,
	})
	data := make([]byte, 0, 8192)
	for {
		_, dlen, err := readHeader(c.br, &c.hdr, c.ahs[:], int(srv.ours.TargetRecvDSL))
		if err != nil {
			return nil, err
		}
		if op := c.hdr.opcode(); op != opLoginReq {
			return nil, fmt.Errorf("%w: %s during login", ErrProtocol, op)
		}
		var req loginRequest
		req.unmarshal(&c.hdr)
		if cap(data) < dlen {
			data = make([]byte, 0, dlen)
		}
		data = data[:dlen]
		if err := readData(c.br, data); err != nil {
			return nil, err
		}
		resp, respData, st, stepErr := m.step(&req, data)

		var sess *session
		if st == loginDone {
			sess = newSession(c, m)
			if err := srv.admit(sess); err != nil {
				var le *loginError
				errors.As(err, &le)
				resp = loginResponse{ISID: req.ISID, ITT: req.ITT,
					StatusClass: uint8(le.status >> 8), StatusDetail: uint8(le.status)}
				respData, st, stepErr = nil, loginFailed, err
				sess = nil
			} else {
				resp.TSIH = sess.tsih
			}
		}
		var h header
		resp.marshal(&h)
		h.setDataLength(len(respData))
		bufs := net.Buffers{h[:], respData, zeroPad[:padLen(len(respData))]}
		if _, err := bufs.WriteTo(c.nc); err != nil {
			if sess != nil {
				srv.release(sess)
				close(sess.ended)
			}
			return nil, err
		}
		switch st {
		case loginFailed:
			return nil, stepErr
		case loginDone:
			if err := c.nc.SetDeadline(time.Time{}); err != nil {
				srv.release(sess)
				close(sess.ended)
				return nil, err
			}
			sess.log.Info("iscsi session started", "header_digest", digestName(sess.dg.header), "data_digest", digestName(sess.dg.data))
			return sess, nil
		}
	}
}
