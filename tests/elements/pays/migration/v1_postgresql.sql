-- JitPay payment schema version 1 as created on PostgreSQL by commit dd5259c (create_all)
CREATE TABLE jitpay_order (
	"orderId" VARCHAR(32) NOT NULL, 
	subject VARCHAR(256) NOT NULL, 
	"amountFen" BIGINT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	provider VARCHAR(128), 
	"tradeNo" VARCHAR(64), 
	"payTime" TIMESTAMP WITH TIME ZONE, 
	"refundedFen" BIGINT NOT NULL, 
	"cashierToken" VARCHAR(64) NOT NULL, 
	"createdAt" TIMESTAMP WITH TIME ZONE NOT NULL, 
	"updatedAt" TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY ("orderId")
);
CREATE INDEX ix_jitpay_order_status ON jitpay_order (status);
CREATE TABLE jitpay_attempt (
	id SERIAL NOT NULL, 
	"orderId" VARCHAR(32) NOT NULL, 
	provider VARCHAR(128) NOT NULL, 
	"providerName" VARCHAR(32) NOT NULL, 
	"payType" VARCHAR(16) NOT NULL, 
	"payUrl" TEXT NOT NULL, 
	"qrCode" TEXT, 
	"expiresAt" TIMESTAMP WITH TIME ZONE, 
	"createdAt" TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY("orderId") REFERENCES jitpay_order ("orderId")
);
CREATE INDEX ix_jitpay_attempt_order ON jitpay_attempt ("orderId", provider, "payType");
CREATE TABLE jitpay_refund (
	id SERIAL NOT NULL, 
	"orderId" VARCHAR(32) NOT NULL, 
	"refundId" VARCHAR(64) NOT NULL, 
	"amountFen" BIGINT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	provider VARCHAR(128) NOT NULL, 
	"refundNo" VARCHAR(64), 
	reason VARCHAR(256), 
	"createdAt" TIMESTAMP WITH TIME ZONE NOT NULL, 
	"updatedAt" TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_jitpay_refund_order_refund UNIQUE ("orderId", "refundId"), 
	FOREIGN KEY("orderId") REFERENCES jitpay_order ("orderId")
);
CREATE TABLE jitpay_audit (
	id SERIAL NOT NULL, 
	at TIMESTAMP WITH TIME ZONE NOT NULL, 
	kind VARCHAR(16) NOT NULL, 
	provider VARCHAR(128), 
	"orderId" VARCHAR(64), 
	verified BOOLEAN, 
	outcome VARCHAR(64) NOT NULL, 
	"errorCode" VARCHAR(64), 
	message TEXT, 
	payload TEXT, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_jitpay_audit_at ON jitpay_audit (at);
CREATE INDEX "ix_jitpay_audit_orderId" ON jitpay_audit ("orderId");
CREATE TABLE jitpay_schema (
	id INTEGER NOT NULL, 
	version INTEGER NOT NULL, 
	PRIMARY KEY (id)
);
