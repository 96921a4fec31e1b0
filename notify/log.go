package notify

import (
	"context"
	"log/slog"

	"github.com/allot/allot"
)

// Log writes each notification to a logger at Info instead of sending it:
// for development. A nil Logger means slog.Default().
type Log struct {
	Logger *slog.Logger
}

var _ allot.Notifier = Log{}

// Notify logs n's key, order, recipient and subject; it never fails.
func (l Log) Notify(ctx context.Context, n allot.Notification) error {
	lg := l.Logger
	if lg == nil {
		lg = slog.Default()
	}
	lg.InfoContext(ctx, "notification",
		slog.String("key", n.Key),
		slog.String("order_id", n.OrderID),
		slog.String("to", n.To),
		slog.String("subject", n.Subject))
	return nil
}
