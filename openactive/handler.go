package openactive

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"html"
	"io"
	"log/slog"
	nethttp "net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// Config configures the OpenActive API.
type Config struct {
	// BaseURL is how clients reach this server (no trailing slash).
	BaseURL string
	// Partners maps booking partners' API keys (Authorization: Bearer) to
	// their ids. Each partner sees only its own orders.
	Partners map[string]string
	// TestInterface turns on the test interface and accepts the test
	// suite's X-OpenActive-Test-Client-Id header as the partner's identity.
	// Never in production.
	TestInterface bool
	// LeaseTTL is how long a lease lasts (15 minutes by default).
	LeaseTTL time.Duration
	Site     Site
}

// Handler serves the OpenActive API.
type Handler struct {
	eng  *engine.Engine
	log  *slog.Logger
	cfg  Config
	base string
	ids  ids
	site Site
	mux  *nethttp.ServeMux
}

// New returns the OpenActive API on eng.
func New(eng *engine.Engine, cfg Config, log *slog.Logger) *Handler {
	if log == nil {
		log = slog.Default()
	}
	if cfg.LeaseTTL <= 0 {
		cfg.LeaseTTL = 15 * time.Minute
	}
	if cfg.Site.Name == "" {
		cfg.Site = DefaultSite
	}
	base := strings.TrimSuffix(cfg.BaseURL, "/")
	h := &Handler{eng: eng, log: log, cfg: cfg, base: base, ids: ids{base}, site: cfg.Site, mux: nethttp.NewServeMux()}
	h.mux.HandleFunc("GET /openactive", h.datasetSite)
	h.mux.HandleFunc("GET /feeds/session-series", h.feed(true))
	h.mux.HandleFunc("GET /feeds/scheduled-sessions", h.feed(false))
	h.mux.HandleFunc("PUT /api/openbooking/order-quote-templates/{uuid}", h.partner(h.quote(false)))
	h.mux.HandleFunc("PUT /api/openbooking/order-quotes/{uuid}", h.partner(h.quote(true)))
	h.mux.HandleFunc("DELETE /api/openbooking/order-quotes/{uuid}", h.partner(h.deleteQuote))
	h.mux.HandleFunc("PUT /api/openbooking/orders/{uuid}", h.partner(h.book))
	h.mux.HandleFunc("DELETE /api/openbooking/orders/{uuid}", h.partner(h.deleteOrder))
	h.mux.HandleFunc("GET /api/openbooking/orders-rpde", h.partner(h.ordersFeed))
	if cfg.TestInterface {
		h.mux.HandleFunc("POST /api/openbooking/test-interface/datasets/{dataset}/opportunities", h.createTestOpportunity)
		h.mux.HandleFunc("DELETE /api/openbooking/test-interface/datasets/{dataset}", h.deleteTestData)
		h.mux.HandleFunc("POST /api/openbooking/test-interface/actions", func(w nethttp.ResponseWriter, r *nethttp.Request) {
			h.write(w, 501, oaError("NotImplementedError", "no test actions are implemented", 501))
		})
	}
	return h
}

// Routes are the path prefixes this handler serves.
var Routes = []string{"/openactive", "/feeds/", "/api/openbooking/"}

func (h *Handler) ServeHTTP(w nethttp.ResponseWriter, r *nethttp.Request) {
	if _, pattern := h.mux.Handler(r); pattern == "" {
		h.write(w, 404, oaError("NotFoundError", "no such path "+r.URL.Path, 404))
		return
	}
	h.mux.ServeHTTP(w, r)
}

func (h *Handler) write(w nethttp.ResponseWriter, status int, body any) {
	h.writeRaw(w, status, mustJSON(body))
}

func (h *Handler) writeRaw(w nethttp.ResponseWriter, status int, b []byte) {
	w.Header().Set("Content-Type", MediaType)
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

func (h *Handler) fail(w nethttp.ResponseWriter, r *nethttp.Request, err error) {
	var de *allot.Error
	if errors.As(err, &de) {
		switch de.Code {
		case allot.CodeNotFound:
			h.write(w, 404, oaError("NotFoundError", de.Detail, 404))
		case allot.CodeIdempotencyInFlight:
			h.write(w, 409, oaError("OrderAlreadyExistsError", de.Detail, 409))
		case allot.CodeOutcomeUnknown:
			h.write(w, 503, outcomeUnknown())
		default:
			h.write(w, 400, oaError("InvalidAPIRequestError", de.Detail, 400))
		}
		return
	}
	h.log.ErrorContext(r.Context(), "openactive request failed", "method", r.Method, "path", r.URL.Path, "err", err)
	h.write(w, 500, oaError("InternalApplicationError", "the server failed; it is logged", 500))
}

type partnerKey struct{}

// partner authenticates the booking partner: an API key, or in test mode
// the suite's client id header.
func (h *Handler) partner(next nethttp.HandlerFunc) nethttp.HandlerFunc {
	return func(w nethttp.ResponseWriter, r *nethttp.Request) {
		id := ""
		if tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer "); ok {
			for key, p := range h.cfg.Partners {
				if subtle.ConstantTimeCompare([]byte(tok), []byte(key)) == 1 {
					id = p
				}
			}
		}
		if id == "" && h.cfg.TestInterface {
			id = r.Header.Get("X-OpenActive-Test-Client-Id")
		}
		if !partnerID.MatchString(id) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="openactive"`)
			h.write(w, 401, oaError("MissingAuthorizationDetailsError", "a booking partner's API key is required (Authorization: Bearer ...)", 401))
			return
		}
		next(w, r.WithContext(context.WithValue(r.Context(), partnerKey{}, id)))
	}
}

var partnerID = regexp.MustCompile(`^[A-Za-z0-9-]{1,64}$`)
var uuidPattern = regexp.MustCompile(`^[0-9a-fA-F-]{8,64}$`)

func partnerOf(ctx context.Context) string { p, _ := ctx.Value(partnerKey{}).(string); return p }

// orderID is Allot's id for a partner's Order UUID, and leaseID for the
// lease of its OrderQuote: the partner is part of both, so partners never
// see or touch each other's; and they differ, because capacity claims are
// kept by owner id.
func orderID(partner, uuid string) string { return "oa." + partner + "." + strings.ToLower(uuid) }
func leaseID(partner, uuid string) string { return "oaq." + partner + "." + strings.ToLower(uuid) }

// ValidPartner reports whether a booking partner's name can be used.
func ValidPartner(name string) bool { return partnerID.MatchString(name) }

func (h *Handler) datasetSite(w nethttp.ResponseWriter, r *nethttp.Request) {
	feed := func(name, path string) obj {
		return obj{"@type": "DataDownload", "name": name, "identifier": name, "additionalType": "https://openactive.io/" + name,
			"encodingFormat": rpdeType, "contentUrl": h.base + path}
	}
	ds := obj{"@context": []string{"https://schema.org/", "https://openactive.io/"}, "@type": "Dataset",
		"@id": h.base + "/openactive", "url": h.base + "/openactive", "name": h.site.Name + " Sessions",
		"description": "Sessions of " + h.site.Name + ", bookable through the Open Booking API.",
		"keywords":    []string{"Sessions", "OpenActive"}, "license": license,
		"discussionUrl": "https://github.com/allot/allot/issues", "documentation": "https://developer.openactive.io/",
		"inLanguage": []string{"en-GB"}, "schemaVersion": "https://openactive.io/modelling-opportunity-data/2.0/",
		"publisher": obj{"@type": "Organization", "name": h.site.Name, "legalName": h.site.LegalName, "url": h.base + "/",
			"logo": obj{"@type": "ImageObject", "url": h.base + "/logo.png"}},
		"bookingService": obj{"@type": "BookingService", "name": "Allot", "url": h.base + "/"},
		"distribution":   []obj{feed("SessionSeries", "/feeds/session-series"), feed("ScheduledSession", "/feeds/scheduled-sessions")},
		"datePublished":  "2026-01-01T00:00:00Z", "dateModified": "2026-01-01T00:00:00Z",
		"accessService": obj{"@type": "WebAPI", "name": "Open Booking API", "description": "Book " + h.site.Name + "'s sessions.",
			"documentation":       "https://permalink.openactive.io/dataset-site/open-booking-api-documentation",
			"termsOfService":      "https://openactive.io/terms/",
			"endpointDescription": "https://www.openactive.io/open-booking-api/EditorsDraft/swagger.json",
			"endpointUrl":         h.ids.booking(), "conformsTo": []string{"https://openactive.io/open-booking-api/EditorsDraft/"},
			"landingPage": h.base + "/openactive/booking-partner-signup"}}
	// JSON inside <script> must neither close it nor open a comment:
	// json.Marshal escapes <, > and & (mustJSON does not, for the feeds).
	b, err := json.Marshal(ds)
	if err != nil {
		panic(fmt.Sprintf("openactive: the dataset does not marshal: %v", err))
	}
	js := string(b)
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	fmt.Fprintf(w, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>%s</title>\n<script type=\"application/ld+json\">\n%s\n</script></head>\n<body><h1>%s</h1><p>Open data and the Open Booking API for %s.</p></body></html>\n",
		html.EscapeString(h.site.Name+" Sessions"), js, html.EscapeString(h.site.Name+" Sessions"), html.EscapeString(h.site.Name))
}

const feedPage = 500

// afterChange reads an RPDE page's afterChangeNumber (0 when absent), or
// answers 400 and reports false.
func (h *Handler) afterChange(w nethttp.ResponseWriter, r *nethttp.Request) (int64, bool) {
	v := r.URL.Query().Get("afterChangeNumber")
	if v == "" {
		return 0, true
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		h.write(w, 400, oaError("InvalidAPIRequestError", "afterChangeNumber must be a non-negative integer", 400))
		return 0, false
	}
	return n, true
}

// feed pages the opportunity changes of one kind: series (the slot
// resources) or sessions (their slots), each at its latest change number.
func (h *Handler) feed(series bool) nethttp.HandlerFunc {
	return func(w nethttp.ResponseWriter, r *nethttp.Request) {
		ctx := r.Context()
		after, ok := h.afterChange(w, r)
		if !ok {
			return
		}
		var items []obj
		cursor, last := after, after
		resources := map[string]allot.Resource{} // read once per page
		for len(items) == 0 {
			chs, err := h.eng.OpportunityFeed(ctx, cursor, feedPage)
			if err != nil {
				h.fail(w, r, err)
				return
			}
			for _, c := range chs {
				cursor = c.ChangeNo
				if (c.Key == "") != series {
					continue
				}
				it, err := h.feedItem(ctx, c, resources)
				if err != nil {
					h.fail(w, r, err)
					return
				}
				items, last = append(items, it), c.ChangeNo
			}
			if len(chs) < feedPage {
				break
			}
		}
		path := "/feeds/scheduled-sessions"
		if series {
			path = "/feeds/session-series"
		}
		next := h.base + path + "?afterChangeNumber=" + strconv.FormatInt(last, 10)
		if len(items) == 0 {
			next = h.base + r.URL.RequestURI() // the last page names itself
			w.Header().Set("Cache-Control", "public, max-age=8")
		} else {
			w.Header().Set("Cache-Control", "public, max-age=3600")
		}
		if items == nil {
			items = []obj{}
		}
		w.Header().Set("Content-Type", rpdeType)
		_, _ = w.Write(mustJSON(obj{"next": next, "items": items, "license": license}))
	}
}

func (h *Handler) feedItem(ctx context.Context, c allot.OpportunityChange, resources map[string]allot.Resource) (obj, error) {
	res, ok := resources[c.ResourceID]
	if !ok {
		var err error
		if res, err = h.eng.GetResource(ctx, c.ResourceID); err != nil {
			return nil, err
		}
		resources[c.ResourceID] = res
	}
	if c.Deleted {
		kind, id := "SessionSeries", res.ID
		if c.Key != "" {
			kind, id = "ScheduledSession", res.ID+"/"+c.Key
		}
		return obj{"state": "deleted", "kind": kind, "id": id, "modified": c.ChangeNo}, nil
	}
	if c.Key == "" {
		return obj{"state": "updated", "kind": "SessionSeries", "id": res.ID, "modified": c.ChangeNo, "data": h.seriesObj(res, true)}, nil
	}
	slot, b, err := h.slot(ctx, res, c.Key)
	if err != nil {
		return nil, err
	}
	return obj{"state": "updated", "kind": "ScheduledSession", "id": res.ID + "/" + slot.ID, "modified": c.ChangeNo,
		"data": h.sessionObj(res, slot, b, false)}, nil
}

// slot reads a slot and its bucket as they stand.
func (h *Handler) slot(ctx context.Context, res allot.Resource, key string) (allot.Slot, allot.Bucket, error) {
	for _, s := range res.Slots {
		if s.ID == key {
			// [key, key+"\x01"): only key itself (no key holds a NUL).
			bs, err := h.eng.Store().Buckets(ctx, res.ID, key, key+"\x01")
			if err != nil {
				return s, allot.Bucket{}, err
			}
			for _, b := range bs {
				if b.Key == key {
					return s, b, nil
				}
			}
			return s, allot.Bucket{}, fmt.Errorf("openactive: slot %s/%s has no bucket", res.ID, key)
		}
	}
	return allot.Slot{}, allot.Bucket{}, allot.Errorf(allot.CodeNotFound, "resource %q has no slot %q", res.ID, key)
}

// readBody reads a JSON-LD request body (any JSON media type).
func readBody(r *nethttp.Request, dst any) ([]byte, error) {
	b, err := io.ReadAll(nethttp.MaxBytesReader(nil, r.Body, 1<<20))
	if err != nil {
		return nil, allot.Invalid("body", "the body could not be read: %v", err)
	}
	if err := json.Unmarshal(b, dst); err != nil {
		return nil, allot.Invalid("body", "the body is not a valid JSON-LD object: %v", err)
	}
	return b, nil
}

func newToken() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func hashOf(parts ...[]byte) string {
	s := sha256.New()
	for _, p := range parts {
		s.Write(p)
		s.Write([]byte{0})
	}
	return hex.EncodeToString(s.Sum(nil))
}
