package allot

import (
	"context"
	"strings"
	"time"
)

// Store keeps Allot's data. Implementations: store/sqlite (embedded default)
// and store/postgres; both pass store/storetest. A store enforces no business
// rule: it stores, locks and reads. The engine decides.
type Store interface {
	Reader
	// Write runs fn in one read-write transaction and commits if fn returns
	// nil. Buckets locked through the Tx stay locked until commit, so
	// decisions taken on them hold. Write returns fn's error unchanged; a
	// store error that is worth retrying (deadlock, serialization, busy)
	// satisfies IsRetryable. An error means the transaction rolled back,
	// except ErrOutcomeUnknown: COMMIT was sent and whether it took effect
	// could not be found out. A commit whose answer was lost but that the
	// store found committed is a success.
	Write(ctx context.Context, fn func(Tx) error) error
	// IsRetryable reports whether a failed Write may be retried as a whole.
	IsRetryable(err error) bool

	// ClaimIdempotencyKey records that a request with key and hash is in
	// flight, under token. If the key is already known it returns the record
	// instead (and claims nothing), unless that record is in flight and its
	// claim older than staleAfter: then it takes the claim over.
	ClaimIdempotencyKey(ctx context.Context, c IdempotencyClaim, staleAfter time.Duration) (*IdempotencyRecord, error)
	// ReleaseIdempotencyKey forgets an in-flight claim whose request had no
	// effect (it failed internally), so that a retry can run.
	ReleaseIdempotencyKey(ctx context.Context, key, token string) error
	// SetCursor stores a named position.
	SetCursor(ctx context.Context, name string, v int64) error

	Webhooks
	// DeleteIdempotencyKeysBefore forgets completed keys older than t.
	DeleteIdempotencyKeysBefore(ctx context.Context, t time.Time) (int, error)

	Close() error
}

// Reader reads committed state. Outside Write it reads the latest committed
// data; inside a Tx it reads what that transaction sees.
type Reader interface {
	GetResource(ctx context.Context, id string) (Resource, error)
	// Buckets returns the stored buckets of one resource whose keys lie in
	// [fromKey, toKey) (all when both are empty), in key order. Nights never
	// touched have no row; the caller fills them from the default capacity.
	Buckets(ctx context.Context, resourceID, fromKey, toKey string) ([]Bucket, error)
	GetHold(ctx context.Context, id string) (Hold, error)
	GetOrder(ctx context.Context, id string) (Order, error)
	GetCustomer(ctx context.Context, id string) (Customer, error)
	ListOrders(ctx context.Context, f OrderFilter) ([]Order, error)
	// Claims lists the live claims on a resource (for invariant checks and
	// operators), in bucket order.
	Claims(ctx context.Context, resourceID string) ([]Claim, error)
	// EventsAfter lists outbox events with Seq > after, in Seq order.
	EventsAfter(ctx context.Context, after int64, limit int) ([]Event, error)
	// ExpiredHolds lists up to limit holds that still have claims and are
	// expired at now (active past expires_at, or marked expired).
	ExpiredHolds(ctx context.Context, now time.Time, limit int) ([]string, error)
	// EventsAfterChange lists sequenced events with ChangeNo > after, in
	// ChangeNo order: what publishers relay.
	EventsAfterChange(ctx context.Context, after int64, limit int) ([]Event, error)
	// Cursor reads a named position (a publisher's last relayed change
	// number); 0 if never set.
	Cursor(ctx context.Context, name string) (int64, error)
	// FeedItems lists the Orders feed after a change number, in order.
	FeedItems(ctx context.Context, afterChange int64, limit int) ([]FeedItem, error)
	// OpportunityChanges lists the opportunities (slot resources and their
	// slots) at their latest change after a change number, in order.
	OpportunityChanges(ctx context.Context, afterChange int64, limit int) ([]OpportunityChange, error)
}

// OpportunityChange says that an opportunity changed (its description or
// its remaining capacity) at a change number: a slot resource (Key "") or
// one of its slots. Opportunity feeds re-publish it, as it stands, there.
type OpportunityChange struct {
	ResourceID string
	Key        string
	ChangeNo   int64
	Modified   time.Time
	// Deleted: the opportunity was retired; once deleted it stays so.
	Deleted bool
}

// FeedItem is one order in the Orders feed, at its latest change.
type FeedItem struct {
	ID       string
	ChangeNo int64
	Modified time.Time
	Deleted  bool
	Data     []byte // the order, as JSON
}

// OrderFilter selects orders for ListOrders: by customer and status, paged
// by ID (IDs sort by creation time), at most Limit.
type OrderFilter struct {
	CustomerID string
	Status     OrderStatus
	AfterID    string
	Limit      int
}

// SerialWriter is a Store that runs one write transaction at a time (the
// embedded SQLite store): its transactions commit in the order they write,
// so one may number its own events (give them change numbers) before it
// commits.
type SerialWriter interface {
	SerialWrites()
}

// Savepointer is a Tx that can undo part of itself.
type Savepointer interface {
	// Savepoint runs fn. If fn fails, everything fn wrote is undone, fn's
	// error is returned as failed, and the transaction goes on; err is set
	// only when the transaction itself can no longer be used.
	Savepoint(ctx context.Context, fn func() error) (failed, err error)
}

// OwnNumberer is a Tx of a SerialWriter that writes an event's change
// number with it when Event.ChangeNo is set (AppendEvents), so that a batch
// that numbers its own events need not read them back and write them again.
type OwnNumberer interface {
	// Unsequenced reports whether any event waits for a change number.
	Unsequenced(ctx context.Context) (bool, error)
}

// BucketSpec asks for one bucket to be locked; if it has no row yet it is
// created with DefaultCapacity (nightly buckets are made on first use).
// Create false means a missing row is reported, not made.
type BucketSpec struct {
	BucketKey
	DefaultCapacity int
	Create          bool
}

// Tx is one read-write transaction.
type Tx interface {
	Reader

	// InsertResource stores a resource and the buckets of its slots or stock.
	// It returns ErrConflict if the id is taken.
	InsertResource(ctx context.Context, r Resource) error
	// InsertSlot adds a slot (and its bucket) to a slot resource.
	InsertSlot(ctx context.Context, resourceID string, s Slot) error

	// LockBuckets locks the buckets named by specs, in BucketKey order,
	// creating missing ones where Create is set, and returns them in that
	// order. A missing bucket with Create unset is left out of the result.
	// specs must be sorted and free of duplicates.
	LockBuckets(ctx context.Context, specs []BucketSpec) ([]Bucket, error)
	// SaveBuckets writes the capacity, held and booked of locked buckets.
	SaveBuckets(ctx context.Context, bs []Bucket) error

	// AddClaims stores new claims (an owner has at most one per bucket).
	AddClaims(ctx context.Context, cs []Claim) error
	// OwnerClaims lists an owner's live claims in bucket order.
	OwnerClaims(ctx context.Context, ownerID string) ([]Claim, error)
	// DeleteClaims removes claims (by owner and bucket).
	DeleteClaims(ctx context.Context, cs []Claim) error
	// MoveClaims gives all of from's claims to owner to, of kind k.
	MoveClaims(ctx context.Context, from, to string, k ClaimKind) error
	// ExpiredHoldClaims lists held claims on the given buckets whose hold is
	// active but expired at now.
	ExpiredHoldClaims(ctx context.Context, keys []BucketKey, now time.Time) ([]Claim, error)

	InsertHold(ctx context.Context, h Hold) error
	// SetHoldStatus updates a hold; it returns ErrNotFound if no such hold.
	SetHoldStatus(ctx context.Context, id string, s HoldStatus, orderID string) error
	// ReplaceHold stores h over any hold with its id (a lease renewed or
	// changed under the same id).
	ReplaceHold(ctx context.Context, h Hold) error
	// LockHold reads a hold and locks its row until commit.
	LockHold(ctx context.Context, id string) (Hold, error)

	// InsertCustomer stores a customer; ErrConflict if the id is taken.
	InsertCustomer(ctx context.Context, c Customer) error

	// InsertOrder stores an order, its lines and its history.
	InsertOrder(ctx context.Context, o Order) error
	// LockOrder reads an order and locks its row until commit.
	LockOrder(ctx context.Context, id string) (Order, error)
	// SetOrderStatus changes an order's status and appends t to its history.
	SetOrderStatus(ctx context.Context, id string, t Transition) error

	// AppendEvents adds events to the outbox; the store assigns Seq.
	AppendEvents(ctx context.Context, es []Event) error

	// LockSequencer makes this transaction the only sequencer until it
	// ends; it reports false if another holds the role (then do nothing).
	LockSequencer(ctx context.Context) (bool, error)
	// UnsequencedEvents lists up to limit committed events that have no
	// change number yet, in Seq order, locked.
	UnsequencedEvents(ctx context.Context, limit int) ([]Event, error)
	// Sequence gives events their change numbers (parallel slices) and
	// upserts the feed items and the opportunity changes (numbered after
	// the events); numbers must exceed every number given. On an
	// OwnNumberer store, seqs may be nil: the events were appended with
	// their numbers, and only the feeds and the last number given are
	// brought up to date.
	Sequence(ctx context.Context, seqs, changeNos []int64, items []FeedItem, opps []OpportunityChange) error
	// LastChangeNumber is the highest change number given so far.
	LastChangeNumber(ctx context.Context) (int64, error)

	// CompleteIdempotencyKey stores the response of the request that holds
	// the claim (key, token). It returns ErrIdempotencyLost if that claim
	// is no longer this request's.
	CompleteIdempotencyKey(ctx context.Context, key, token string, status int, body []byte) error
}

// Idempotency keys Allot derives itself, from a payment provider's event id
// or an OpenActive Order's UUID. A client may not send a key with these
// prefixes: claimed first, it would block the request it names.
const (
	KeyPaymentCallback = "payment-callback:"
	KeyOpenActiveOrder = "openactive-order:"
)

// ReservedIdempotencyKey reports whether key is one Allot derives itself.
func ReservedIdempotencyKey(key string) bool {
	return strings.HasPrefix(key, KeyPaymentCallback) || strings.HasPrefix(key, KeyOpenActiveOrder)
}

// IdempotencyClaim is an in-flight request under an Idempotency-Key.
type IdempotencyClaim struct {
	Key   string
	Hash  string // of method, path and body
	Token string // this attempt's
	At    time.Time
}

// IdempotencyRecord is what a store knows of a key.
type IdempotencyRecord struct {
	Key       string
	Hash      string
	Token     string
	Done      bool
	Status    int
	Body      []byte
	ClaimedAt time.Time
}

// Webhook is a subscriber to events over HTTP.
type Webhook struct {
	ID         string    `json:"id"`
	URL        string    `json:"url"`
	Secret     string    `json:"secret,omitempty"`
	EventTypes []string  `json:"event_types"`
	Cursor     int64     `json:"-"`
	CreatedAt  time.Time `json:"created_at"`
}

// DeliveryStatus is where a webhook delivery stands.
type DeliveryStatus string

const (
	DeliveryPending   DeliveryStatus = "pending"
	DeliveryDelivered DeliveryStatus = "delivered"
	DeliveryFailed    DeliveryStatus = "failed"
)

// Delivery is one event sent, or to be sent, to one webhook.
type Delivery struct {
	ID            string         `json:"id"`
	WebhookID     string         `json:"webhook_id"`
	EventID       string         `json:"event_id"`
	EventType     string         `json:"event_type"`
	ChangeNo      int64          `json:"change_no"`
	Body          []byte         `json:"-"`
	Status        DeliveryStatus `json:"status"`
	Attempts      int            `json:"attempts"`
	NextAttemptAt time.Time      `json:"next_attempt_at"`
	CreatedAt     time.Time      `json:"created_at"`
	LastStatus    int            `json:"last_status,omitempty"`
	LastError     string         `json:"last_error,omitempty"`
}

// Webhooks keeps webhook subscribers and their deliveries.
type Webhooks interface {
	InsertWebhook(ctx context.Context, w Webhook) error
	GetWebhook(ctx context.Context, id string) (Webhook, error)
	ListWebhooks(ctx context.Context) ([]Webhook, error)
	// DeleteWebhook removes a webhook and its deliveries.
	DeleteWebhook(ctx context.Context, id string) error
	// AddDeliveries records deliveries (a repeat of one webhook and event
	// is ignored) and moves the webhook's fan-out cursor to cursor.
	AddDeliveries(ctx context.Context, webhookID string, ds []Delivery, cursor int64) error
	// ClaimDeliveries takes up to limit pending deliveries due at now and
	// leases them until leaseUntil, so that no other node sends them.
	ClaimDeliveries(ctx context.Context, now, leaseUntil time.Time, limit int) ([]Delivery, error)
	// UpdateDelivery records a delivery's new state. With leased set (an
	// attempt's outcome), only while the delivery still carries that lease
	// (its next attempt time as claimed): a replay or another node that
	// took it since wins, and ErrNotFound is returned.
	UpdateDelivery(ctx context.Context, d Delivery, leased time.Time) error
	GetDelivery(ctx context.Context, id string) (Delivery, error)
	// ListDeliveries lists a webhook's deliveries, newest first, optionally
	// of one status.
	ListDeliveries(ctx context.Context, webhookID string, status DeliveryStatus, limit int) ([]Delivery, error)
}
