package http

import (
	"encoding/json"
	"errors"
	"fmt"
	nethttp "net/http"
	"reflect"
	"strings"
	"time"

	"github.com/allot/allot"
)

// ProblemBase prefixes every problem type: the type of a problem is
// ProblemBase + its code, stable for clients to switch on.
const ProblemBase = "https://allot.dev/problems/"

// Codes of problems that arise in the HTTP layer itself.
const (
	codeMalformed        allot.Code = "malformed-request"
	codeTooLarge         allot.Code = "request-too-large"
	codeMediaType        allot.Code = "unsupported-media-type"
	codeMethodNotAllowed allot.Code = "method-not-allowed"
	codeInternal         allot.Code = "internal-error"
	codeUnavailable      allot.Code = "unavailable"
)

// problemStatus maps each code to its HTTP status and title.
var problemStatus = map[allot.Code]struct {
	status int
	title  string
}{
	allot.CodeInvalid:                {422, "The request is invalid"},
	allot.CodeNotFound:               {404, "Not found"},
	allot.CodeInsufficientCapacity:   {409, "Insufficient capacity"},
	allot.CodeCapacityReservedByHold: {409, "Capacity is reserved by other holds"},
	allot.CodeCapacityBelowUsage:     {409, "Capacity below what is held and booked"},
	allot.CodeHoldExpired:            {410, "The hold has expired"},
	allot.CodeHoldReleased:           {410, "The hold was released"},
	allot.CodeHoldConverted:          {409, "The hold is already booked"},
	allot.CodeInvalidTransition:      {409, "The order cannot make that change"},
	allot.CodeAlreadyExists:          {409, "Already exists"},
	allot.CodeIdempotencyMismatch:    {422, "Idempotency-Key reused with another request"},
	allot.CodeIdempotencyInFlight:    {409, "A request with this Idempotency-Key is in flight"},
	allot.CodeCurrencyMismatch:       {422, "Lines priced in different currencies"},
	allot.CodeUnknownCustomer:        {422, "Unknown customer"},
	allot.CodeUnauthorized:           {401, "Unauthorized"},
	allot.CodeOutcomeUnknown:         {503, "The outcome of the request is unknown"},
	codeMalformed:                    {400, "Malformed request"},
	codeTooLarge:                     {413, "Request body too large"},
	codeMediaType:                    {415, "Unsupported media type"},
	codeMethodNotAllowed:             {405, "Method not allowed"},
	codeInternal:                     {500, "Internal error"},
	codeUnavailable:                  {503, "Unavailable"},
}

// Problem is an RFC 9457 problem details object, with Allot's extensions.
type Problem struct {
	Type     string           `json:"type"`
	Title    string           `json:"title"`
	Status   int              `json:"status"`
	Detail   string           `json:"detail,omitempty"`
	Instance string           `json:"instance,omitempty"`
	Code     allot.Code       `json:"code"`
	Field    string           `json:"field,omitempty"`
	Line     *int             `json:"line,omitempty"`
	Bucket   *bucketReference `json:"bucket,omitempty"`
}

type bucketReference struct {
	ResourceID string `json:"resource_id"`
	Key        string `json:"key"`
}

// problemOf turns any error into a problem. Errors that are not domain
// errors are internal: their text is logged, never shown.
func problemOf(err error, instance string) Problem {
	var de *allot.Error
	if !errors.As(err, &de) {
		de = &allot.Error{Code: codeInternal, Detail: "the server failed to handle the request; it has been logged", Line: -1}
	}
	st, ok := problemStatus[de.Code]
	if !ok {
		st = problemStatus[codeInternal]
	}
	p := Problem{Type: ProblemBase + string(de.Code), Title: st.title, Status: st.status, Detail: de.Detail,
		Instance: instance, Code: de.Code, Field: de.Field}
	if de.Line >= 0 {
		p.Line = &de.Line
	}
	if de.Bucket != nil {
		p.Bucket = &bucketReference{ResourceID: de.Bucket.ResourceID, Key: de.Bucket.Key}
	}
	return p
}

func problemBody(p Problem) []byte {
	b, err := json.Marshal(p)
	if err != nil {
		panic(fmt.Sprintf("problem does not marshal: %v", err))
	}
	return append(b, '\n')
}

// writeProblem answers err as a problem about instance (the request path).
func writeProblem(w nethttp.ResponseWriter, err error, instance string) {
	p := problemOf(err, instance)
	writeBody(w, p.Status, problemBody(p))
}

func writeBody(w nethttp.ResponseWriter, status int, body []byte) {
	ct := "application/json"
	if status >= 400 {
		ct = "application/problem+json"
	}
	if len(body) > 0 {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

func malformed(format string, args ...any) *allot.Error {
	return &allot.Error{Code: codeMalformed, Detail: fmt.Sprintf(format, args...), Line: -1}
}

// jsonFieldError explains a decoding error, naming the field where it can.
func jsonFieldError(err error) *allot.Error {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	var tooBig *nethttp.MaxBytesError
	var badTime *time.ParseError
	switch {
	case errors.As(err, &tooBig):
		return &allot.Error{Code: codeTooLarge, Detail: fmt.Sprintf("the body may be at most %d bytes", tooBig.Limit), Line: -1}
	case errors.As(err, &syn):
		return malformed("the body is not valid JSON (at byte %d): %v", syn.Offset, err)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "(body)"
		}
		if typ.Type == reflect.TypeFor[allot.Date]() {
			return &allot.Error{Code: codeMalformed, Field: field, Line: -1, Detail: fmt.Sprintf("%s must be a date of the form YYYY-MM-DD, not %s", field, typ.Value)}
		}
		return &allot.Error{Code: codeMalformed, Field: field, Line: -1, Detail: fmt.Sprintf("%s must be %s, not a JSON %s", field, jsonKind(typ.Type.Kind().String()), typ.Value)}
	case errors.As(err, &badTime):
		return malformed("times are RFC 3339 with a zone, such as \"2027-01-04T09:00:00Z\", not %q", badTime.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return &allot.Error{Code: codeMalformed, Field: name, Line: -1, Detail: fmt.Sprintf("unknown field %q; see GET /v1/openapi.json for the fields this request takes", name)}
	case err.Error() == "EOF":
		return malformed("the body is empty; a JSON object is required")
	case err.Error() == "unexpected EOF":
		return malformed("the body ends before its JSON does")
	}
	return malformed("the body could not be read as this request's JSON: %v", err)
}

func jsonKind(k string) string {
	switch k {
	case "int", "int32", "int64":
		return "an integer"
	case "string":
		return "a string"
	case "slice":
		return "an array"
	case "struct", "map", "ptr":
		return "an object"
	case "bool":
		return "a boolean"
	}
	return "a " + k
}
