package http

import (
	"errors"
	nethttp "net/http"

	"github.com/allot/allot"
	"github.com/allot/allot/webhook"
)

type webhookJSON struct {
	URL        string   `json:"url"`
	Secret     string   `json:"secret"`
	EventTypes []string `json:"event_types"`
}

func (s *Server) createWebhook(r *nethttp.Request) (any, error) {
	var in webhookJSON
	if err := decode(r, &in); err != nil {
		return nil, err
	}
	return webhook.Register(r.Context(), s.eng.Store(), in.URL, in.Secret, in.EventTypes)
}

// hidden drops the secret: it is shown once, when the webhook is made.
func hidden(w allot.Webhook) allot.Webhook { w.Secret = ""; return w }

func (s *Server) getWebhook(r *nethttp.Request) (any, error) {
	w, err := s.eng.Store().GetWebhook(r.Context(), r.PathValue("id"))
	if errors.Is(err, allot.ErrNotFound) {
		return nil, allot.Errorf(allot.CodeNotFound, "webhook %q does not exist", r.PathValue("id"))
	}
	return hidden(w), err
}

func (s *Server) listWebhooks(r *nethttp.Request) (any, error) {
	ws, err := s.eng.Store().ListWebhooks(r.Context())
	out := struct {
		Webhooks []allot.Webhook `json:"webhooks"`
	}{Webhooks: []allot.Webhook{}}
	for _, w := range ws {
		out.Webhooks = append(out.Webhooks, hidden(w))
	}
	return out, err
}

func (s *Server) deleteWebhook(r *nethttp.Request) (any, error) {
	err := s.eng.Store().DeleteWebhook(r.Context(), r.PathValue("id"))
	if errors.Is(err, allot.ErrNotFound) {
		return nil, allot.Errorf(allot.CodeNotFound, "webhook %q does not exist", r.PathValue("id"))
	}
	return nil, err
}

func (s *Server) listDeliveries(r *nethttp.Request) (any, error) {
	if _, err := s.getWebhook(r); err != nil {
		return nil, err
	}
	status := allot.DeliveryStatus(r.URL.Query().Get("status"))
	switch status {
	case "", allot.DeliveryPending, allot.DeliveryDelivered, allot.DeliveryFailed:
	default:
		return nil, allot.Invalid("status", "status must be pending, delivered or failed, got %q", status)
	}
	limit, err := queryInt(r, "limit")
	if err != nil {
		return nil, err
	}
	if limit == 0 {
		limit = 50
	}
	if limit < 1 || limit > 200 {
		return nil, allot.Invalid("limit", "limit must be between 1 and 200")
	}
	ds, err := s.eng.Store().ListDeliveries(r.Context(), r.PathValue("id"), status, limit)
	out := struct {
		Deliveries []allot.Delivery `json:"deliveries"`
	}{Deliveries: []allot.Delivery{}}
	out.Deliveries = append(out.Deliveries, ds...)
	return out, err
}

func (s *Server) replayDelivery(r *nethttp.Request) (any, error) {
	return webhook.Replay(r.Context(), s.eng.Store(), r.PathValue("id"), r.PathValue("delivery"))
}
