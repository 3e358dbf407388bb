metadata description = 'A log search alert over the nightly audit\'s summary line, and the optional e-mail action group it notifies.'

// Facts relied on (sources):
// - Log search alert rule shape (kind LogAlert, criteria.allOf, windowSize, overrideQueryTimeRange "overrides
//   the query time range (default is WindowSize*NumberOfEvaluationPeriods)"):
//   https://learn.microsoft.com/azure/templates/microsoft.insights/scheduledqueryrules ; 2023-12-01 is the GA version.
// - Action group with e-mail receivers (groupShortName at most 12 characters, location "global"):
//   https://learn.microsoft.com/azure/templates/microsoft.insights/actiongroups (2023-01-01 GA).
// - Workspace-based Application Insights writes traces to the AppTraces table (Message, SeverityLevel,
//   TimeGenerated, ...): https://learn.microsoft.com/azure/azure-monitor/reference/tables/apptraces

param name string
param location string = resourceGroup().location
param tags object = {}

@description('Resource id of the Log Analytics workspace behind Application Insights (where AppTraces lives).')
param workspaceId string

@description('Address that gets the alert by e-mail. Empty: no action group; the alert still fires and shows in Azure Monitor.')
param alertEmail string = ''

// The nightly audit logs exactly one line "kvlink audit {json}" (kvlink_core/audit.py run_audit). The query
// returns a row, and so fires, when the newest line says drift remains (which includes unreached
// organizations and vaults), when it counts open errors, when its report could not be stored, or when no
// line was written in 26 hours (the nightly schedule plus slack for a slow or retried run). The empty
// datatable keeps the query valid before the app has logged anything: without it a workspace with no
// AppTraces table yet fails the query instead of firing.
var query = '''
let staleAfter = 26h;
let audits = union isfuzzy=true
        (datatable(TimeGenerated: datetime, Message: string)[]),
        (AppTraces | project TimeGenerated, Message)
    | where TimeGenerated > ago(staleAfter) and Message startswith "kvlink audit {"
    | extend summary = parse_json(substring(Message, strlen("kvlink audit ")))
    | project TimeGenerated,
        DriftRemains = tobool(summary.driftRemains),
        OpenErrors = toint(coalesce(summary.openFindingsBySeverity.error, summary.findingsBySeverity.error)),
        Unreached = array_length(summary.unreached),
        ReportStored = tobool(summary.reportStored);
union
    (audits
        | top 1 by TimeGenerated desc
        | where DriftRemains or OpenErrors > 0 or not(ReportStored)
        | extend Reason = strcat("drift remains: ", DriftRemains, "; open errors: ", OpenErrors,
            "; unreached: ", Unreached, "; report stored: ", ReportStored)),
    (print TimeGenerated = now(), Reason = "no kvlink audit line in 26 hours"
        | where toscalar(audits | count) == 0)
'''

resource actionGroup 'Microsoft.Insights/actionGroups@2023-01-01' = if (!empty(alertEmail)) {
  name: 'ag-${name}'
  location: 'global'
  tags: tags
  properties: {
    groupShortName: 'kvlink'
    enabled: true
    emailReceivers: [
      {
        name: 'kvlink-operators'
        emailAddress: alertEmail
        useCommonAlertSchema: true
      }
    ]
  }
}

resource auditAlert 'Microsoft.Insights/scheduledQueryRules@2023-12-01' = {
  name: name
  location: location
  tags: tags
  kind: 'LogAlert'
  properties: {
    displayName: 'kvlink audit: drift, open errors, or no audit in 26 h'
    description: 'The newest "kvlink audit" line reports drift (or unreached organizations), open errors or an unstored report, or no audit ran for 26 hours. See docs/troubleshooting.md.'
    severity: 2
    enabled: true
    scopes: [
      workspaceId
    ]
    // Hourly is enough for a nightly job; the query looks back 26 hours on its own, so the time
    // range it may read is widened past the window.
    evaluationFrequency: 'PT1H'
    windowSize: 'PT1H'
    overrideQueryTimeRange: 'P2D'
    criteria: {
      allOf: [
        {
          query: query
          timeAggregation: 'Count'
          operator: 'GreaterThan'
          threshold: 0
          failingPeriods: {
            numberOfEvaluationPeriods: 1
            minFailingPeriodsToAlert: 1
          }
        }
      ]
    }
    autoMitigate: true
    actions: {
      actionGroups: empty(alertEmail) ? [] : [
        actionGroup!.id
      ]
    }
  }
}

output alertRuleName string = auditAlert.name
output actionGroupId string = empty(alertEmail) ? '' : actionGroup!.id
