// Package openactive serves Allot's sessions through the OpenActive Open
// Booking API 1.0: a dataset site, RPDE feeds of SessionSeries (slot
// resources) and ScheduledSessions (their slots), leases at C1 and C2,
// booking at B, deletion, the Orders feed per booking partner, and the test
// interface the official test suite drives.
package openactive

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strings"
	"time"

	"github.com/allot/allot"
)

const (
	contextURL = "https://openactive.io/"
	// MediaType is the Open Booking API's content type.
	MediaType = "application/vnd.openactive.booking+json; version=1"
	rpdeType  = "application/vnd.openactive.rpde+json; version=1"
	license   = "https://creativecommons.org/licenses/by/4.0/"
)

// Site describes the organisation behind the dataset: the one seller of
// the sessions, their venue and activity (Allot's resources carry name,
// capacity and price; the rest is the site's).
type Site struct {
	Name, LegalName, Email, Telephone string
	TaxMode                           string
	Activity                          Concept
	Venue                             Venue
}

// Concept is an activity of the OpenActive activity list.
type Concept struct{ ID, Label string }

// Venue is where the sessions happen.
type Venue struct {
	Name, Street, Locality, Region, PostalCode, Country string
	Latitude, Longitude                                 float64
}

// DefaultSite is used when none is configured.
var DefaultSite = Site{
	Name: "Allot Leisure", LegalName: "Allot Leisure Ltd", Email: "bookings@allot.example.com", Telephone: "020 7946 0000",
	TaxMode:  "https://openactive.io/TaxGross",
	Activity: Concept{ID: "https://openactive.io/activity-list#bf1a5e00-cdcf-465d-8c5a-6f57040b7f7e", Label: "Yoga"},
	Venue: Venue{Name: "Allot Sports Centre", Street: "1 High Street", Locality: "London", Region: "Greater London",
		PostalCode: "SW1A 1AA", Country: "GB", Latitude: 51.5014, Longitude: -0.1419},
}

// obj is a JSON-LD object; keys keep the order they are set in.
type obj = map[string]any

// dateTime formats a time as OpenActive wants it: whole seconds, UTC.
func dateTime(t time.Time) string {
	return t.UTC().Truncate(time.Second).Format("2006-01-02T15:04:05Z")
}

// price is an amount as an OpenActive JSON number.
func price(m *allot.Money) float64 {
	if m == nil {
		return 0
	}
	return float64(m.Minor) / math.Pow10(m.Scale)
}

func currency(m *allot.Money) string {
	if m == nil || m.Currency == "" {
		return "GBP"
	}
	return m.Currency
}

// ids builds and parses the URLs that identify things.
type ids struct{ base string }

func (i ids) seller() string           { return i.base + "/api/identifiers/sellers/1" }
func (i ids) series(res string) string { return i.base + "/api/identifiers/session-series/" + res }
func (i ids) offer(res string) string  { return i.series(res) + "#/offers/0" }
func (i ids) session(res, k string) string {
	return i.base + "/api/identifiers/scheduled-sessions/" + res + "/" + k
}
func (i ids) booking() string          { return i.base + "/api/openbooking" }
func (i ids) quote(uuid string) string { return i.booking() + "/order-quotes/" + uuid }
func (i ids) order(uuid string) string { return i.booking() + "/orders/" + uuid }

// parseSession reads a ScheduledSession @id into its resource and slot.
func (i ids) parseSession(u string) (res, slot string, ok bool) {
	rest, ok := strings.CutPrefix(u, i.base+"/api/identifiers/scheduled-sessions/")
	if !ok {
		return "", "", false
	}
	res, slot, ok = strings.Cut(rest, "/")
	return res, slot, ok && res != "" && slot != "" && !strings.Contains(slot, "/")
}

func (s Site) place() obj {
	v := s.Venue
	return obj{"@type": "Place", "name": v.Name,
		"address": obj{"@type": "PostalAddress", "streetAddress": v.Street, "addressLocality": v.Locality, "addressRegion": v.Region,
			"postalCode": v.PostalCode, "addressCountry": v.Country},
		"geo": obj{"@type": "GeoCoordinates", "latitude": v.Latitude, "longitude": v.Longitude}}
}

func (h *Handler) sellerObj() obj {
	s := h.site
	v := s.Venue
	return obj{"@type": "Organization", "@id": h.ids.seller(), "name": s.Name, "legalName": s.LegalName,
		"url": h.base + "/sellers/1", "telephone": s.Telephone, "email": s.Email, "isOpenBookingAllowed": true, "taxMode": s.TaxMode,
		"address": obj{"@type": "PostalAddress", "streetAddress": v.Street, "addressLocality": v.Locality, "addressRegion": v.Region,
			"postalCode": v.PostalCode, "addressCountry": v.Country}}
}

func (h *Handler) activity() []obj {
	return []obj{{"@type": "Concept", "@id": h.site.Activity.ID, "prefLabel": h.site.Activity.Label, "inScheme": "https://openactive.io/activity-list"}}
}

func (h *Handler) offerObj(r allot.Resource) obj {
	o := obj{"@type": "Offer", "@id": h.ids.offer(r.ID), "identifier": "0", "name": "Standard", "price": price(r.Price), "priceCurrency": currency(r.Price)}
	return o
}

// seriesObj is a slot resource as a SessionSeries; full for the feed,
// without organizer and offers when embedded in a booking response.
func (h *Handler) seriesObj(r allot.Resource, full bool) obj {
	o := obj{"@type": "SessionSeries", "@id": h.ids.series(r.ID), "identifier": r.ID, "name": r.Name,
		"url": h.base + "/session-series/" + r.ID, "activity": h.activity(), "location": h.site.place()}
	if full {
		o["@context"] = contextURL
		o["organizer"] = obj{"@type": "Organization", "@id": h.ids.seller(), "name": h.site.Name, "isOpenBookingAllowed": true,
			"taxMode": h.site.TaxMode, "url": h.base + "/sellers/1"}
		o["offers"] = []obj{h.offerObj(r)}
	}
	return o
}

// sessionObj is a slot as a ScheduledSession: in the feed its superEvent is
// the series' @id; in a booking response, the series embedded.
func (h *Handler) sessionObj(r allot.Resource, s allot.Slot, b allot.Bucket, embedded bool) obj {
	o := obj{"@type": "ScheduledSession", "@id": h.ids.session(r.ID, s.ID), "identifier": r.ID + "/" + s.ID,
		"startDate": dateTime(s.StartsAt), "endDate": dateTime(s.StartsAt.Add(time.Hour)), "duration": "PT1H",
		"eventStatus":             "https://schema.org/EventScheduled",
		"maximumAttendeeCapacity": b.Capacity, "remainingAttendeeCapacity": b.Available()}
	if embedded {
		o["superEvent"] = h.seriesObj(r, false)
	} else {
		o["@context"] = contextURL
		o["superEvent"] = h.ids.series(r.ID)
	}
	return o
}

// oaError is an Open Booking API error body.
func oaError(typ, desc string, status int) obj {
	return obj{"@context": contextURL, "@type": typ, "name": typ, "description": desc, "statusCode": status}
}

// outcomeUnknown answers a request whose write may or may not have been
// made (allot.CodeOutcomeUnknown): a 503 invites the retry, and the same
// request (same Order UUID) then learns which.
func outcomeUnknown() obj {
	return oaError("TemporarilyUnableToProduceOrderError", "the database did not confirm whether this request took effect; retry it to learn what happened", 503)
}

// itemError is an error inside an OrderItem (no @context: only the root
// object carries it).
func itemError(typ, desc string) obj {
	return obj{"@type": typ, "name": typ, "description": desc, "statusCode": 409}
}

// idOf reads a reference that is either a URL string or an object with @id.
func idOf(raw json.RawMessage) string {
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var o struct {
		ID string `json:"@id"`
	}
	if json.Unmarshal(raw, &o) == nil {
		return o.ID
	}
	return ""
}

// mustJSON encodes v without HTML escaping: the feeds' next links keep
// their '&' (not \u0026), as RPDE clients follow them.
func mustJSON(v any) []byte {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		panic(fmt.Sprintf("openactive: %T does not marshal: %v", v, err))
	}
	return bytes.TrimSuffix(b.Bytes(), []byte("\n"))
}
